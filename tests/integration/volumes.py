"""Replica servers and engines as real processes for the volume tests, with the real NBD clients
(nbdinfo, qemu-io, qemu-img, nbdcopy, fio) run as a user would run them. Everything started here
is killed at the end, stopped processes included."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeorch.spec.secret_files import write_keyring

from .conftest import free_port

TOOLS = {"nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "qemu-io": "qemu-utils", "qemu-img": "qemu-utils",
         "fio": "fio"}


def need(tool: str) -> str:
    """The tool's path; the test fails naming the package when it is missing (never a skip)."""
    path = shutil.which(tool)
    if path is None:
        package = TOOLS.get(tool, tool)
        pytest.fail(f"{tool} is missing: apt-get install {package} (make test installs it as root)")
    return path


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


class Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self._log_start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL)

    def wait_for_line(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args[3]} exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout}s: {self.log.read_text()[-2000:]}")

    def output(self) -> str:
        """What this process wrote to its log (an earlier run's lines are not its own)."""
        with self.log.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


class VolumeRig:
    """Replica servers on 127.0.0.1 and engines against them; `close()` kills them all."""

    def __init__(self, folder: Path, replicas: int = 3, *, secure: bool = True) -> None:
        self.folder = folder
        self.keyring = folder / "keyring"
        self.secure = secure
        if secure:
            write_keyring(self.keyring)
        self.processes: list[Process] = []
        self.replica_addresses = [f"127.0.0.1:{free_port()}" for _ in range(replicas)]
        self.replicas: list[Process] = [self.start_replica(i) for i in range(replicas)]
        for replica in self.replicas:
            replica.wait_for_line("replica server on")

    def _auth(self) -> list[str]:
        return ["--keyring", str(self.keyring), "--cluster", "test"] if self.secure else ["--insecure"]

    def start_replica(self, index: int) -> Process:
        process = Process([sys.executable, "-m", "drivers.volumes", "replica", "--dir", str(self.folder / f"r{index}"),
                           "--listen", self.replica_addresses[index], *self._auth(),
                           "--status-file", str(self.folder / f"r{index}.status")],
                          self.folder / f"replica-{index}.log")
        self.processes.append(process)
        return process

    def restart_replica(self, index: int) -> None:
        self.replicas[index].kill()
        self.replicas[index] = self.start_replica(index)
        self.replicas[index].wait_for_line("replica server on")

    def start_engine(self, name: str = "vol", size: str = "64MiB", timeout: str = "3s", tag: str = "a",
                     wait: bool = True) -> Engine:
        socket = self.folder / f"{name}-{tag}.sock"
        port = free_port()
        args = [sys.executable, "-m", "drivers.volumes", "engine", "--volume", name, "--size", size,
                *[arg for a in self.replica_addresses for arg in ("--replica", a)],
                "--listen", f"unix:{socket}", "--listen", f"127.0.0.1:{port}", *self._auth(),
                "--replica-timeout", timeout, "--status-file", str(self.folder / f"{name}-{tag}.status")]
        process = Process(args, self.folder / f"engine-{name}-{tag}.log")
        self.processes.append(process)
        engine = Engine(process, name, socket, port, self.folder / f"{name}-{tag}.status")
        if wait:
            process.wait_for_line("serving NBD")
        return engine

    def close(self) -> None:
        for process in self.processes:
            process.kill()


class Engine:
    def __init__(self, process: Process, name: str, socket: Path, port: int, status_file: Path) -> None:
        self.process = process
        self.name = name
        self.socket = socket
        self.port = port
        self.status_file = status_file

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.name}?socket={self.socket}"

    @property
    def tcp_uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.name}"

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data: dict[str, Any] = json.loads(self.status_file.read_text())
            return data
        return {}

    def qemu_io(self, *commands: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        args = [need("qemu-io"), "-f", "raw", self.uri]
        for command in commands:
            args += ["-c", command]
        return run(*args, timeout=timeout)


@contextlib.contextmanager
def volume_rig(folder: Path, replicas: int = 3, *, secure: bool = True) -> Iterator[VolumeRig]:
    rig = VolumeRig(folder, replicas, secure=secure)
    try:
        yield rig
    finally:
        rig.close()


def io_ok(result: subprocess.CompletedProcess[str]) -> bool:
    """qemu-io exits 0 even when a command fails; it says so on its output."""
    text = result.stdout + result.stderr
    return result.returncode == 0 and "failed" not in text and "error" not in text.lower()


def wait_until(check: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")



@contextlib.contextmanager
def block_device(engine: Engine, folder: Path) -> Iterator[str]:
    """The volume as a kernel block device without the nbd module: nbdfuse exposes it as a file,
    losetup makes that a loop device. Torn down in reverse order, whatever happened."""
    if os.geteuid() != 0:
        pytest.fail("a loop device needs root: run make test as root")
    for tool, package in (("nbdfuse", "libnbd-bin"), ("losetup", "mount"), ("fusermount3", "fuse3"),
                          ("mkfs.ext4", "e2fsprogs")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install {package} (make test installs it as root)")
    if not Path("/dev/fuse").exists():
        pytest.fail("/dev/fuse is missing: the volume tests attach through FUSE")
    fuse_dir = folder / "fuse"
    fuse_dir.mkdir()
    image = fuse_dir / engine.name
    fuse = subprocess.Popen(["nbdfuse", str(image), engine.uri], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    device = ""
    try:
        wait_until(image.exists, 15)
        attached = run("losetup", "--find", "--show", "--direct-io=off", str(image))
        if attached.returncode != 0:
            raise AssertionError(f"losetup: {attached.stderr}")
        device = attached.stdout.strip()
        yield device
    finally:
        if device:
            run("losetup", "-d", device)
        run("fusermount3", "-u", str(fuse_dir))
        try:
            fuse.wait(10)
        except subprocess.TimeoutExpired:
            fuse.kill()
            fuse.wait(10)


@contextlib.contextmanager
def mounted(device: str, where: Path) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    result = run("mount", device, str(where))
    if result.returncode != 0:
        raise AssertionError(f"mount: {result.stderr}")
    try:
        yield where
    finally:
        if run("umount", str(where)).returncode != 0:
            run("umount", "-l", str(where))


@contextlib.contextmanager
def cut_tcp_ports(*ports: int, hosts: tuple[str, ...] = ()) -> Iterator[None]:
    """Drop every TCP packet to these loopback ports (on these addresses only, when given): a
    partition, until the block ends; the rules go whatever happens."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.fail("this test cuts links with iptables: run it as root with iptables installed")
    where = [["-d", host] for host in hosts] or [[]]
    rules = [["INPUT", "-i", "lo", *address, "-p", "tcp", "--dport", str(port), "-m", "comment", "--comment",
              "nodeorch-test-partition", "-j", "DROP"] for port in ports for address in where]
    try:
        for rule in rules:
            subprocess.run(["iptables", "-I", *rule], check=True)
        yield
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=False, capture_output=True)
