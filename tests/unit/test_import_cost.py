"""What the agent loads at start: the docker SDK and zeroconf cost memory on every host, so they
are imported only when a node has Docker work or mDNS discovery; its process runs without the ssl
module, which it never needs."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_loads_neither_the_docker_sdk_nor_zeroconf_until_needed() -> None:
    probe = "import sys, nodeorch.faces.cli, nodeorch.agent; print(sorted({'docker', 'zeroconf'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def run_command(argv: str, then: str) -> str:
    """Run the `nodeorch` entry point with `argv` as a command line would, then `then`; its output."""
    probe = (f"import sys; sys.argv = ['nodeorch', *{argv.split()!r}]\n"
             "from nodeorch.faces.entry import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n" + then)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[-1]


def test_the_agent_process_runs_without_ssl_and_everything_it_uses_works_without() -> None:
    then = (
        "import asyncio, aiohttp, aiohttp.web, docker, zeroconf.asyncio, nodeorch.agent\n"
        "from gossip import Keyring, Sealer, generate_key\n"
        "sealer = Sealer('test', Keyring([generate_key()]))\n"
        "assert sealer.open(sealer.seal(b'hello'), 0.0) == b'hello'\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('_ssl' in sys.modules, 'libssl' in maps, 'libcrypto' in maps)\n"
    )
    assert run_command("agent --help", then) == "False False True", "no TLS library; libcrypto for AES-GCM"
    assert run_command("status --help", then).startswith("True"), "the other commands import as usual"
