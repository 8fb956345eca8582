"""``python -m tdmr_search`` runs the same CLI as ``tdmr-search``."""

from tdmr_search.cli import main

raise SystemExit(main())
