"""mDNS discovery between hosts in separate network namespaces on one bridge, with no seeds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from gossip._process import wait_until
from nodeorch.spec.node_config import render_node_config
from nodeorch.spec.secret_files import write_keyring

from .netns import Bridge, in_netns


def agent_config(folder: Path, name: str, ip: str, cluster: str) -> Path:
    config = folder / f"{name}.toml"
    config.write_text(render_node_config(
        name=name, data_dir=folder / name, cluster=cluster, keyring=folder / "keyring", bind=f"{ip}:7946",
        api="127.0.0.1:7947", desired=folder / "desired.toml", discovery="mdns",
    ))

    return config


def spawn(ns: str, argv: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log else None
    try:
        return subprocess.Popen(in_netns(ns, argv), stdout=out or subprocess.DEVNULL, stderr=out or subprocess.DEVNULL)
    finally:
        if out:
            out.close()


def members(ns: str) -> dict[str, str]:
    result = subprocess.run(
        in_netns(ns, [sys.executable, "-m", "nodeorch", "members", "--api", "127.0.0.1:7947", "--json"]),
        capture_output=True, text=True, check=False, timeout=20,
    )
    if result.returncode != 0:
        return {}
    return {m["name"]: m["state"] for m in json.loads(result.stdout)}


async def test_agents_find_each_other_by_mdns_and_ignore_another_cluster(tmp_path: Path) -> None:
    write_keyring(tmp_path / "keyring")
    (tmp_path / "desired.toml").write_text("revision = 1\n")
    bridge = Bridge(4)
    with bridge as hosts:
        names = ["mdns-a", "mdns-b", "mdns-c", "stranger"]
        clusters = ["blue", "blue", "blue", "green"]
        procs = []
        try:
            for i, (ns, name, cluster) in enumerate(zip(hosts, names, clusters, strict=True)):
                config = agent_config(tmp_path, name, bridge.address(i), cluster)
                argv = [sys.executable, "-m", "nodeorch", "agent", "--config", str(config), "--log-level", "debug"]
                procs.append(spawn(ns, argv, tmp_path / f"{name}.log"))

            def blue_converged() -> bool:
                return all(
                    {k: v for k, v in members(ns).items()} == {"mdns-a": "alive", "mdns-b": "alive", "mdns-c": "alive"}
                    for ns in hosts[:3]
                )

            try:
                await wait_until(blue_converged, 60, interval=1.0)
            except TimeoutError:
                logs = "\n".join((tmp_path / f"{n}.log").read_text()[-1500:] for n in names)
                raise AssertionError(f"mDNS discovery did not converge:\n{logs}") from None
            assert set(members(hosts[3])) == {"stranger"}, "another cluster is seen but never joined"

            # A host that comes back later is found again without a restart of the others.
            procs[2].terminate()
            procs[2].wait(20)
            await asyncio.sleep(1)
            config = agent_config(tmp_path, "mdns-c", bridge.address(2), "blue")
            procs[2] = spawn(hosts[2], [sys.executable, "-m", "nodeorch", "agent", "--config", str(config)], None)
            await wait_until(blue_converged, 60, interval=1.0)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(10)
