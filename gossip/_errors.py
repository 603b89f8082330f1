"""One root exception for the package; transient and permanent failures kept apart."""

from __future__ import annotations


class GossipError(Exception):
    """Root of every error the gossip package raises."""


class ConfigError(GossipError, ValueError):
    """A configuration value is impossible (permanent)."""


class DecodeError(GossipError):
    """Bytes from the network are malformed, oversized or of the wrong shape (permanent, dropped)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        """A short stable label, used as the drop counter's key."""


class KeyringError(GossipError, ValueError):
    """A key is malformed, or the keyring operation would leave no key to encrypt with."""


class PayloadTooLarge(GossipError, ValueError):
    """Metadata or app state beyond the configured limit; refused before it leaves this node."""


class BadEventName(GossipError, ValueError):
    """A user event's name is empty, too long or not printable; refused before it leaves."""


class TransportError(GossipError):
    """A send or TCP exchange failed (transient: the peer may be down or the network lossy)."""


class PeerRefused(TransportError):
    """The peer's host answered that nothing listens on its port: the member process is gone."""


class JoinError(GossipError):
    """No seed could be reached."""


class ClosedError(GossipError):
    """The node was used after it stopped."""
