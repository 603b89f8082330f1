"""python -m nodeorch: the same as the `nodeorch` command."""

from nodeorch.faces.cli import main

raise SystemExit(main())
