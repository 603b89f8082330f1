"""python -m gossip: run a member (`node`), a demo cluster (`demo`), or make a key (`keygen`)."""

from gossip._cli import main

raise SystemExit(main())
