"""``python -m wgpy``: the ``wgpy`` command."""

from wgpy.tools.cli import main

raise SystemExit(main())
