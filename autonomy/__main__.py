"""``python -m autonomy``: the ``autonomy`` command."""

from autonomy.cli import main

raise SystemExit(main())
