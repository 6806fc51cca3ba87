"""`python -m khofs` is the `khofs` command."""

from khofs.cli.main import main

raise SystemExit(main())
