"""Reading TOML config files with errors that point at the mistake: the file, the line, the key
and what is wrong. Shared by nodeorch.toml (node_config), desired.toml (service_spec,
volume_spec) and the hooks."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodeorch.errors import NodeorchError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigFileError(NodeorchError, ValueError):
    """A config file is refused; the message names the file, the line or key, and the problem."""

    def __init__(self, path: Path | str, problem: str, *, key: str = "", line: int | None = None) -> None:
        where = str(path)
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.key = key
        self.line = line
        self.problem = problem


def parse_duration(text: str) -> float:
    """Seconds from "500ms", "2s", "1m", "1h"; ValueError for anything else."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration (like \"500ms\", \"2s\", \"1m\")")
    return float(match.group(1)) * _UNITS[match.group(2)]


def find_line(text: str, section: str, key: str) -> int | None:
    """The line where `key` is set inside `[section]` (or at top level), for error messages."""
    current = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[") and not line.startswith("[["):
            current = line.strip("[] ")
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", line):
            return number
    return None


def read_config_file(path: Path) -> bytes:
    """A config file's bytes, or ConfigFileError saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigFileError(path, "no such file") from None
    except OSError as error:
        raise ConfigFileError(path, f"cannot read: {error.strerror}") from None


def table_line(text: str, kind: str, index: int, key: str, section: str = "") -> int | None:
    """The line of `key` inside the index-th [[KIND]] table (or its [KIND.SECTION] table)."""
    count, current = -1, ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line == f"[[{kind}]]":
            count, current = count + 1, ""
            if count == index and not key:
                return number
        elif line.startswith("[") and count == index:
            current = line.strip("[] ").removeprefix(f"{kind}.")
        elif count == index and current == section and re.match(rf"^{re.escape(key)}\s*=", line):
            return number
    return None


class TableReader:
    """Reads one [[KIND]] table of desired.toml, each key once, with errors that point at it."""

    def __init__(self, path: Path, text: str, index: int, raw: dict[str, Any], kind: str = "service") -> None:
        self.path, self.text, self.index, self.raw, self.kind = path, text, index, dict(raw), kind
        name = raw.get("name")
        self.label = f"{kind}[{name if isinstance(name, str) and name else index}]"
        self.section = ""

    def line(self, key: str) -> int | None:
        """Where `key` is written, or (for a missing key) where its table starts."""
        found = table_line(self.text, self.kind, self.index, key, self.section)
        return found if found is not None else table_line(self.text, self.kind, self.index, "")

    def fail(self, key: str, problem: str) -> ConfigFileError:
        qualified = f"{self.label}.{self.section + '.' if self.section else ''}{key}"
        return ConfigFileError(self.path, problem, key=qualified, line=self.line(key))

    def take(self, key: str, check: Callable[[Any], Any], default: Any) -> Any:
        if key not in self.raw:
            return default
        value = self.raw.pop(key)
        try:
            return check(value)
        except (TypeError, ValueError) as error:
            raise self.fail(key, str(error)) from None

    def finish(self, known: list[str]) -> None:
        for key in self.raw:
            raise self.fail(key, f"unknown key (known: {', '.join(known)})")


def string_value(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {value!r}")
    return value


def boolean_value(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if string_value(value) not in choices:
            raise ValueError(f"{value!r}: expected {' or '.join(choices)}")
        return str(value)

    return check


def integer_in(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {value!r}")
        return value

    return check


def duration_value(value: Any) -> float:
    if type(value) in (int, float) and value >= 0:
        return float(value)
    return parse_duration(string_value(value))


def string_table(value: Any) -> dict[str, str]:
    if type(value) is not dict or not all(type(v) is str for v in value.values()):
        raise TypeError("expected a table of strings")
    return dict(value)


