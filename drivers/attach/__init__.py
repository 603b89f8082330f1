"""Attaching a volume to this host: its engine's NBD export becomes a mounted ext4 filesystem
that instances use. One Protocol, implemented with the kernel (nbdfuse, a loop device, ext4) and
in memory for unit tests of the reconcilers; both pass one conformance suite."""

from drivers.attach._types import Attacher, AttachError
from drivers.attach.memory import MemoryAttacher

__all__ = ["AttachError", "Attacher", "MemoryAttacher"]
