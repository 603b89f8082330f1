"""Running a short-lived command from asyncio with its output captured, never left behind."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Sequence


async def run_captured(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run `argv` (stdin closed, stderr with stdout) and return its exit code and output; the
    process is killed if it outlives `timeout` (TimeoutError) or the caller is cancelled. OSError
    when it cannot start."""
    process = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace").strip()
