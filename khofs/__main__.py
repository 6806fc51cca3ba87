"""`python -m khofs` is the `khofs` command."""

from khofs.cli import main

raise SystemExit(main())
