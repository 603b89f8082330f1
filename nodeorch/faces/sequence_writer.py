"""A workload that proves what a volume kept: it appends 1, 2, 3 ... to DIR/sequence, one line
each, fsyncs every line and only then prints `acked N at TIME`. On start it reads what the file
holds and prints `found N in order=True|False at TIME`: after any crash, N must be at least the
last number acknowledged before it. Used by the volume tests and bench/soak.py.

    python -m nodeorch.faces.sequence_writer DIR [--pause SECONDS]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def found(path: Path) -> int:
    if not path.exists():
        return 0
    lines = path.read_text().split("\n")[:-1]  # a last line without its newline was never acknowledged
    in_order = lines == [str(i) for i in range(1, len(lines) + 1)]
    print(f"found {len(lines)} in order={in_order} at {time.time():.3f}", flush=True)
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between writes")
    args = parser.parse_args()
    path = args.folder / "sequence"
    count = found(path)
    with path.open("a") as out:
        while True:
            count += 1
            out.write(f"{count}\n")
            out.flush()
            os.fsync(out.fileno())
            print(f"acked {count} at {time.time():.3f}", flush=True)
            time.sleep(args.pause)


if __name__ == "__main__":
    main()
