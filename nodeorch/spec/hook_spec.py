"""Event hooks in nodeorch.toml: `[[hook]]` tables, each an event filter and a command.

```toml
[[hook]]
name = "page"                          # default: hook-1, hook-2, ...
events = ["member.dead", "volume.degraded", "user.deploy"]   # patterns: member.*, user.*, *
command = ["/usr/local/bin/page-oncall"]
timeout = "30s"                        # then the command's process group is killed
coalesce = "1s"                        # events within this window go to one run
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeorch.spec.toml_tables import ConfigFileError, TableReader, duration_value, string_value

_HOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOOK_KEYS = ["name", "events", "command", "timeout", "coalesce"]


@dataclass(frozen=True, slots=True)
class HookSpec:
    name: str
    events: tuple[str, ...]
    """Shell-style patterns over event kinds (fnmatch): "member.dead", "member.*", "user.deploy"."""
    command: tuple[str, ...]
    timeout: float = 30.0
    coalesce: float = 1.0


def _patterns(value: Any) -> tuple[str, ...]:
    if type(value) is not list or not value or not all(type(v) is str and v and v.isprintable() for v in value):
        raise ValueError('expected a non-empty list of event patterns, like ["member.dead", "user.*"]')
    return tuple(value)


def _argv(value: Any) -> tuple[str, ...]:
    if type(value) is not list or not value or not all(type(v) is str and v for v in value):
        raise ValueError("expected a non-empty list of strings (argv)")
    return tuple(value)


def parse_hooks(path: Path, text: str, raw: Any) -> tuple[HookSpec, ...]:
    if type(raw) is not list or not all(type(item) is dict for item in raw):
        raise ConfigFileError(path, "must be an array of tables: [[hook]]", key="hook")
    hooks = []
    for index, table in enumerate(raw):
        h = TableReader(path, text, index, table, kind="hook")
        name = h.take("name", string_value, f"hook-{index + 1}")
        if not _HOOK_NAME.match(name):
            raise h.fail("name", f"{name!r}: letters, digits, '.', '_', '-'; at most 63")
        if "events" not in h.raw:
            raise h.fail("events", "missing: the event kinds that run this hook")
        if "command" not in h.raw:
            raise h.fail("command", "missing: the argv to run")
        events = h.take("events", _patterns, ())
        command = h.take("command", _argv, ())
        timeout = h.take("timeout", duration_value, 30.0)
        if timeout <= 0:
            raise h.fail("timeout", "must be more than 0")
        coalesce = h.take("coalesce", duration_value, 1.0)
        h.finish(_HOOK_KEYS)
        hooks.append(HookSpec(name, events, command, timeout, coalesce))
    if len({hook.name for hook in hooks}) != len(hooks):
        raise ConfigFileError(path, "two hooks have the same name", key="hook")
    return tuple(hooks)
