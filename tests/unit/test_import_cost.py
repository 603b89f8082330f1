"""What the agent loads at start: the docker SDK and zeroconf cost memory on every host, so they
are imported only when a node has Docker work or mDNS discovery."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_loads_neither_the_docker_sdk_nor_zeroconf_until_needed() -> None:
    probe = "import sys, nodeorch.faces.cli, nodeorch.agent; print(sorted({'docker', 'zeroconf'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
