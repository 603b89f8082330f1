"""The `nodeorch` command and `python -m nodeorch`: one decision before anything else is imported.

The agent speaks no TLS. Its gossip is sealed with AES-GCM from libcrypto, its status endpoint
is plain HTTP on an address of its host, Docker is reached over the engine's unix socket, and
health probes are plain HTTP or TCP. Yet asyncio and aiohttp import Python's ssl module whenever
it exists, and that costs every agent about 3.5 MB of memory (libssl, its initialisation and
the module's tables) on every host, for months. So the agent's process starts with `ssl`
unimportable. Both libraries are written to run without it, as on a Python built without
OpenSSL, and so is the docker SDK the agent imports once a node has Docker work. Every other
subcommand imports as usual.
"""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["agent"] and "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # the documented way to make an import fail
    from nodeorch.faces.cli import main as run_command

    return run_command()
