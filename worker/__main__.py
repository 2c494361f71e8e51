"""``python -m worker``: see :mod:`worker.cli`."""

from worker.cli import main

raise SystemExit(main())
