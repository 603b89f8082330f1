"""Attaching through the kernel without the nbd module: `nbdfuse` shows the engine's export as a
file, `losetup` makes that file a loop device, which holds ext4, mounted under `folder/mounts`.

Everything it sets up outlives the agent (nbdfuse runs in a session of its own), so I/O goes on
while the agent restarts, and a restarted agent finds the mount and adopts it. `fsck -p` runs
before every mount: the filesystem records whether it was unmounted cleanly, on whichever node
that was, and the check is quick when it was.

Mounts must be seen by the instances and by Docker: under a systemd unit with ProtectSystem=,
the agent lives in a mount namespace of its own whose mounts never reach the host. When the
agent's namespace is not the host's (PID 1's), every step runs in the host's namespace through
`nsenter`, and the host's mounts propagate into the agent's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from drivers.attach._types import AttachError
from drivers.captured import run_captured

log = logging.getLogger(__name__)

TOOLS = {"nbdfuse": "libnbd-bin", "losetup": "mount", "fusermount3": "fuse3", "mkfs.ext4": "e2fsprogs",
         "fsck.ext4": "e2fsprogs", "blkid": "util-linux", "mount": "mount", "umount": "mount"}
EXPORT_WAIT = 15.0
"""How long nbdfuse may take to show the export."""
STEP_TIMEOUT = 600.0
"""mkfs and fsck of a big volume take minutes; nothing else comes near this."""


def missing_tools() -> list[str]:
    """What this host lacks to attach volumes, as "tool (package)"."""
    missing = [f"{tool} ({package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if not Path("/dev/fuse").exists():
        missing.append("/dev/fuse (the fuse kernel module)")
    return missing


HOST_NAMESPACE = Path("/proc/1/ns/mnt")


def host_namespace_prefix(host: Path = HOST_NAMESPACE) -> list[str]:
    """`nsenter` into the host's mount namespace (PID 1's) when this process lives in another one,
    so mounts land where instances and Docker see them; nothing when they are the same."""
    try:
        if os.readlink("/proc/self/ns/mnt") == os.readlink(host):
            return []
    except OSError:
        return []  # not allowed to look: no namespace of our own to escape either
    return ["nsenter", f"--mount={host}", "--"]


def _unescape(field: str) -> str:
    """Mount points in mountinfo have space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def exists(path: Path) -> bool:
    """Whether `path` exists; False too under a FUSE mount whose process died (ENOTCONN)."""
    try:
        path.stat()
    except OSError:
        return False
    return True


def loops_on(listing: str, image: Path) -> list[str]:
    """The loop devices backed by `image`, from `losetup -l -n -O NAME,BACK-FILE` output; by name,
    so a device on a file that can no longer be read (its nbdfuse died) is found too."""
    devices = []
    for line in listing.splitlines():
        name, _, back = line.strip().partition(" ")
        back = back.strip().removesuffix(" (deleted)")
        if back == str(image):
            devices.append(name)
    return devices


LIST_LOOPS = ("losetup", "-l", "-n", "-O", "NAME,BACK-FILE")


def mount_table(folder: Path) -> dict[Path, tuple[str, str]]:
    """Mount point -> (filesystem type, MAJOR:MINOR) of every mount at or below `folder`, as this
    process sees them."""
    found: dict[Path, tuple[str, str]] = {}
    prefix = str(folder.resolve())
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            point = _unescape(fields[4])
            kind = fields[fields.index("-") + 1] if "-" in fields else ""
            if point == prefix or point.startswith(prefix + "/"):
                found[Path(point)] = (kind, fields[2])
    return found


def mounts_under(folder: Path) -> dict[Path, str]:
    """Mount point -> filesystem type of every mount at or below `folder`."""
    return {point: kind for point, (kind, _) in mount_table(folder).items()}


FUSE_CONNECTIONS = Path("/sys/fs/fuse/connections")


def abort_fuse(device: str) -> None:
    """End the FUSE connection of a mount whose daemon died: until then the kernel waits for its
    answers forever, and the loop device on it, and whatever was mounted from it, hang."""
    if FUSE_CONNECTIONS.resolve() not in mounts_under(FUSE_CONNECTIONS):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSE_CONNECTIONS)], capture_output=True,
                       check=False)
    with contextlib.suppress(OSError):
        (FUSE_CONNECTIONS / device.split(":")[1] / "abort").write_text("1")


class FuseLoopAttacher:
    def __init__(self, folder: Path, *, host_namespace: Path = HOST_NAMESPACE) -> None:
        self.folder = folder
        self._prefix = host_namespace_prefix(host_namespace)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def mount_point(self, volume: str) -> Path:
        return self.folder / "mounts" / volume

    def _fuse_dir(self, volume: str) -> Path:
        return self.folder / "fuse" / volume

    def _image(self, volume: str) -> Path:
        return self._fuse_dir(volume) / "disk"

    def attached(self) -> dict[str, Path]:
        mounts = self.folder / "mounts"
        return {point.name: point for point in mounts_under(mounts) if point.parent == mounts.resolve()}

    async def _run(self, *argv: str, step: str, volume: str, ok: Sequence[int] = (0,)) -> str:
        try:
            code, text = await run_captured([*self._prefix, *argv], STEP_TIMEOUT)
        except OSError as error:
            raise AttachError(f"volume {volume}: {step}: cannot run {argv[0]}: {error.strerror}") from None
        if code not in ok:
            raise AttachError(f"volume {volume}: {step} failed ({argv[0]} exit {code}): {text}")
        return text

    async def attach(self, volume: str, export: Path) -> Path:
        where = self.mount_point(volume)
        if where.resolve() in mounts_under(where):
            return where
        if not exists(export):
            raise AttachError(f"volume {volume}: no NBD export at {export} (is its engine running?)")
        device = await self._loop_device(volume, export)
        kind = await self._run("blkid", "-p", "-o", "value", "-s", "TYPE", device, step="reading the filesystem type",
                               volume=volume, ok=(0, 2))
        if not kind:
            log.info("volume %s: first use: making an ext4 filesystem on %s", volume, device)
            # inode tables and journal written now: no background init writes after the mount
            await self._run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                            "-L", volume[:16], device, step="making the filesystem", volume=volume)
        elif kind != "ext4":
            raise AttachError(f"volume {volume}: holds a {kind} filesystem; nodeorch mounts ext4 only")
        else:
            # The filesystem says itself whether it was unmounted cleanly (wherever that was): fsck -p
            # replays the journal and checks it in full only then. Exit 1 (errors corrected) and 2
            # are fine for a filesystem about to be mounted.
            checked = await self._run("fsck.ext4", "-p", device, step="checking the filesystem", volume=volume,
                                      ok=(0, 1, 2))
            lines = checked.splitlines()
            if len(lines) != 1 or "clean," not in lines[0]:
                log.warning("volume %s: was not detached cleanly; fsck: %s", volume, "; ".join(lines))
        where.mkdir(parents=True, exist_ok=True)
        await self._run("mount", "-t", "ext4", device, str(where), step="mounting", volume=volume)
        log.info("volume %s: attached on %s at %s", volume, device, where)
        return where

    async def _loop_device(self, volume: str, export: Path) -> str:
        """The loop device on the volume's nbdfuse file, set up (or found) anew."""
        image = self._image(volume)
        listing = await self._run(*LIST_LOOPS, step="listing loop devices", volume=volume)
        devices = loops_on(listing, image)
        if exists(image) and devices:
            return devices[0]
        if not exists(image):
            for stale in devices:  # on the file of an nbdfuse that died
                await self._run("losetup", "-d", stale, step="releasing a stale loop device", volume=volume)
            await self._start_fuse(volume, export)
        return await self._run("losetup", "--find", "--show", "--direct-io=off", str(image),
                               step="setting up a loop device", volume=volume)

    async def _start_fuse(self, volume: str, export: Path) -> None:
        fuse_dir = self._fuse_dir(volume)
        corpse = mount_table(fuse_dir).get(fuse_dir.resolve())
        if corpse is not None:  # its nbdfuse died
            abort_fuse(corpse[1])
            await self._run("fusermount3", "-u", "-z", str(fuse_dir), step="clearing a dead nbdfuse", volume=volume)
        fuse_dir.mkdir(parents=True, exist_ok=True)
        child = self._spawn_fuse(volume, export)
        self._children[volume] = child
        async with asyncio.timeout(EXPORT_WAIT):
            while not exists(self._image(volume)):
                if child.poll() is not None:
                    raise AttachError(f"volume {volume}: nbdfuse exited ({child.returncode}); see "
                                      f"{self.folder / 'fuse' / f'{volume}.log'}")
                await asyncio.sleep(0.05)

    def _spawn_fuse(self, volume: str, export: Path) -> subprocess.Popen[bytes]:
        with (self.folder / "fuse" / f"{volume}.log").open("ab") as out:
            try:
                return subprocess.Popen([*self._prefix, "nbdfuse", str(self._image(volume)),
                                         f"nbd+unix:///{volume}?socket={export}"],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, close_fds=True)
            except OSError as error:
                raise AttachError(f"volume {volume}: cannot run nbdfuse: {error.strerror}") from None

    async def detach(self, volume: str) -> None:
        where = self.mount_point(volume)
        if where.resolve() in mounts_under(where):
            await self._run("umount", str(where), step="unmounting (is an instance still using it?)", volume=volume)
        listing = await self._run(*LIST_LOOPS, step="listing loop devices", volume=volume)
        for device in loops_on(listing, self._image(volume)):
            await self._run("losetup", "-d", device, step="releasing the loop device", volume=volume)
        fuse_dir = self._fuse_dir(volume)
        if fuse_dir.resolve() in mounts_under(fuse_dir):
            await self._run("fusermount3", "-u", str(fuse_dir), step="stopping nbdfuse", volume=volume)
        child = self._children.pop(volume, None)
        if child is not None:
            try:
                await asyncio.to_thread(child.wait, 10)
            except subprocess.TimeoutExpired:
                log.warning("volume %s: nbdfuse (pid %d) still runs 10 s after its unmount", volume, child.pid)
        log.info("volume %s: detached", volume)


def release_all(folder: Path) -> None:
    """Tear down every attachment under `folder`, whatever state it is in (for tests and `nodeorch
    dev` after agents were stopped or killed): filesystems unmounted (flushed when their device
    still answers, lazily otherwise), the connections of dead nbdfuse processes aborted, loop
    devices released, nbdfuse mounts ended."""
    def run(*argv: str) -> bool:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
        return done.returncode == 0

    table = mount_table(folder)
    for point, (kind, device) in table.items():
        if kind.startswith("fuse") and not exists(point / "disk"):  # its daemon died
            abort_fuse(device)
    for point in sorted(table, key=lambda p: len(p.parts), reverse=True):
        if table[point][0] == "ext4" and not run("umount", str(point)):
            run("umount", "-l", str(point))
    listing = subprocess.run(LIST_LOOPS, capture_output=True, text=True, check=False).stdout
    fuse = folder.resolve() / "fuse"
    for line in listing.splitlines():
        name, _, back = line.strip().partition(" ")
        if back.strip().startswith(f"{fuse}/"):
            run("losetup", "-d", name)
    for point, (kind, _) in table.items():
        if kind.startswith("fuse"):
            run("fusermount3", "-u", "-z", str(point))
