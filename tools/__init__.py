"""Command-line tools that sit beside the training code (evaluation aggregation and others)."""
