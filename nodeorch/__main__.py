"""python -m nodeorch: the same as the `nodeorch` command."""

from nodeorch.cli import main

raise SystemExit(main())
