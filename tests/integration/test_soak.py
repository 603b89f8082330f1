"""The soak's short variant: ten real agents and a writer on a replicated volume through a minute
of chaos (a partition, an agent crash, a host crash), every invariant checked by bench/soak.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nodeorch.reconcile.volume_keeper import volume_attacher

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_ten_agents_keep_every_invariant_through_a_minute_of_chaos() -> None:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.fail("the soak partitions agents with iptables: run as root with iptables installed "
                    "(make test installs it as root)")
    _, cannot_attach = volume_attacher(Path("/tmp"))
    if cannot_attach:
        pytest.fail(f"the soak's volume writer: {cannot_attach} (make test installs the tools as root)")
    result = subprocess.run([sys.executable, str(SOAK), "--agents", "10", "--minutes", "1", "--gap", "8",
                             "--seed", "24", "--volume", "on", "--json"],
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.stdout.strip(), result.stderr[-3000:]
    soak = json.loads(result.stdout.splitlines()[-1])
    assert {f["kind"] for f in soak["faults"]} == {"partition", "agent_crash", "host_crash"}, soak["faults"]
    assert soak["false_deaths"] == [], "nobody declared a node dead that no fault struck"
    shortfalls = [e for e in soak["episodes"] if e["episode"].startswith("shortfall")]
    assert shortfalls and all(e["ok"] for e in shortfalls), "the crashed host's slot came back in time"
    assert all(e["ok"] for e in soak["episodes"]), soak["episodes"]
    assert soak["convergence"] is not None, "every document converged after the chaos"
    assert soak["volume"]["acknowledged"] > 100 and soak["volume"]["lost"] == [], soak["volume"]
    assert soak["ok"] and result.returncode == 0, result.stderr[-3000:]
