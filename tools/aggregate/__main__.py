"""Entry point of `python -m tools.aggregate`."""

from .cli import main

raise SystemExit(main())
