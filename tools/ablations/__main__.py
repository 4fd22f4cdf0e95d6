"""Entry point of `python -m tools.ablations`."""

from .curves import main

raise SystemExit(main())
