"""``python -m fiberlinkd`` is the ``fiberlinkd`` command."""

from fiberlinkd.cli import main

raise SystemExit(main())
