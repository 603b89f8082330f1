"""The demo's volume-backed service: a small key-value store over HTTP that keeps each key as a
file on its volume, written durably (temp file, fsync, rename, fsync of the folder), so what it
acknowledged survives the loss of its node.

    python -m nodeorch.faces.demo_kv --data DIR --bind ADDR --port PORT

    PUT /KEY (body: the value)   201 once the value is on disk
    GET /KEY                     the value, or 404
    GET /                        every key, one per line
"""

from __future__ import annotations

import argparse
import os
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KEY = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_VALUE = 1 << 20


def store(folder: Path, key: str, value: bytes) -> None:
    temp = folder / f".{key}.tmp"
    with temp.open("wb") as out:
        out.write(value)
        out.flush()
        os.fsync(out.fileno())
    temp.replace(folder / key)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def handler(folder: Path) -> type[BaseHTTPRequestHandler]:
    class KeyValue(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _key(self) -> str | None:
            key = self.path.lstrip("/")
            if not KEY.match(key) or key.startswith("."):
                self._answer(400, b"a key is 1 to 128 letters, digits, '.', '_' or '-'\n")
                return None
            return key

        def do_GET(self) -> None:
            if self.path == "/":
                keys = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
                self._answer(200, "".join(f"{k}\n" for k in keys).encode())
                return
            key = self._key()
            if key is not None:
                path = folder / key
                self._answer(200, path.read_bytes()) if path.is_file() else self._answer(404, b"no such key\n")

        def do_PUT(self) -> None:
            key = self._key()
            if key is None:
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_VALUE:
                self._answer(413, b"a value is at most 1 MiB\n")
                return
            store(folder, key, self.rfile.read(length))
            self._answer(201, b"stored\n")

        def log_message(self, format: str, *args: object) -> None:
            pass

    return KeyValue


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m nodeorch.faces.demo_kv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the folder to keep keys in (the volume)")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    folder = Path(args.data)
    with ThreadingHTTPServer((args.bind, args.port), handler(folder)) as server:
        print(f"key-value store on {args.bind}:{args.port}, keys in {folder}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
