"""``python -m autonomy.cli``: the ``autonomy`` command."""

from autonomy.cli import main

raise SystemExit(main())
