"""The root of the package's exceptions, so callers can catch everything nodeorch raises in one place.

Permanent problems (a refused file, a bad document, a usage error) and transient ones (no agent
answered) are kept apart by their own classes below this root.
"""

from __future__ import annotations


class NodeorchError(Exception):
    """Anything nodeorch raises on purpose."""
