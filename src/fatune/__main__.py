"""``python -m fatune``: the same entry point as the ``fatune`` console script."""

from fatune.cli import main

raise SystemExit(main())
