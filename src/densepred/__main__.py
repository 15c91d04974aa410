"""``python -m densepred`` is the ``densepred`` command."""

from .interfaces.cli import main

raise SystemExit(main())
