"""`python -m khofs` is the `khofs` command."""

from khofs.cli.entry import main

raise SystemExit(main())
