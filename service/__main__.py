"""``python -m service`` runs the ``ttc-router`` command."""

from service.cli import main

raise SystemExit(main())
