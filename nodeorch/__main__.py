"""python -m nodeorch: the same as the `nodeorch` command."""

from nodeorch.faces.entry import main

raise SystemExit(main())
