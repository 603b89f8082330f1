"""The errors of the volume data path: one root, transient and permanent kept apart."""

from __future__ import annotations


class VolumeError(Exception):
    """Anything the volume library raises on purpose (bad input, a refused request...)."""


class Fenced(VolumeError):
    """A replica refused a request: it holds a higher epoch, so another engine owns the volume."""


class NoQuorum(VolumeError):
    """Fewer than a majority of the configured replicas hold (or answered) something."""


class ProtocolError(VolumeError):
    """A peer sent something malformed; the connection is closed."""
