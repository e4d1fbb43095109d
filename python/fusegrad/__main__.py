"""``python -m fusegrad`` runs the command-line interface (see fusegrad.cli)."""
from .cli import main

raise SystemExit(main())
