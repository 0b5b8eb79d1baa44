"""Writes the synchronous client, src/wallet_client/client.py, from the asyncio one,
src/wallet_client/async_client.py, with unasync: `async`/`await` dropped and the names below
swapped. The package's build runs it (setup.py), so does `make install`; the file is not checked
in. `python unasync_client.py` writes it; `--check` exits 1 where the file on disk differs from
what it would write (tests/client/test_faces.py asserts the same)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import unasync

PACKAGE = Path(__file__).resolve().parent / "src" / "wallet_client"
SOURCE = PACKAGE / "async_client.py"
TARGET = PACKAGE / "client.py"

# Beyond unasync's own (AsyncIterator, __aenter__, __aexit__ ...).
REPLACEMENTS = {
    "AsyncWalletClient": "WalletClient",
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "aclose": "close",
    "_io_async": "_io_sync",
}

HEADER = (
    "# Generated from async_client.py by clients/python/unasync_client.py when the package is built:\n"
    "# edit async_client.py, not this file (which git ignores).\n"
)


def generate() -> str:
    """The text of the synchronous client."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "_async", "client.py")
        source.parent.mkdir()
        source.write_text(SOURCE.read_text(encoding="utf-8"), encoding="utf-8")
        unasync.unasync_files([str(source)], [unasync.Rule("/_async/", "/_sync/", REPLACEMENTS)])
        return HEADER + Path(tmp, "_sync", "client.py").read_text(encoding="utf-8")


def write() -> None:
    text = generate()
    if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
        TARGET.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != generate():
            print(f"{TARGET} is not what {SOURCE.name} generates: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(f"usage: python {__file__} [--check]", file=sys.stderr)
        return 2
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
