"""One client, two faces: `WalletClient` is generated from `AsyncWalletClient` (unasync, at build
time), so the two expose the same methods with the same parameters, and the generated file on
disk is what the source generates today."""

from __future__ import annotations

import inspect
import runpy
from pathlib import Path
from typing import Any

from wallet_client import AsyncWalletClient, WalletClient

GENERATOR = Path(__file__).resolve().parents[2] / "clients" / "python" / "unasync_client.py"
ASYNC_TO_SYNC = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}


def _methods(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in vars(cls).items()
        if callable(member) and (not name.startswith("_") or name.startswith("__"))
    }


def test_the_sync_client_on_disk_is_what_the_async_one_generates() -> None:
    generator = runpy.run_path(str(GENERATOR))
    assert Path(generator["TARGET"]).read_text(encoding="utf-8") == generator["generate"](), (
        "client.py is stale: run `python clients/python/unasync_client.py` (or `make install`)"
    )


def test_both_faces_expose_the_same_methods_with_the_same_parameters() -> None:
    async_methods = _methods(AsyncWalletClient)
    sync_methods = _methods(WalletClient)
    assert {ASYNC_TO_SYNC.get(name, name) for name in async_methods} == set(sync_methods)
    assert "topup" in sync_methods
    assert "iter_history" in sync_methods
    for name, async_method in async_methods.items():
        sync_method = sync_methods[ASYNC_TO_SYNC.get(name, name)]
        async_params = [
            (p.name, p.kind, p.default) for p in inspect.signature(async_method).parameters.values()
        ]
        sync_params = [
            (p.name, p.kind, p.default) for p in inspect.signature(sync_method).parameters.values()
        ]
        assert async_params == sync_params, name
        if name == "__init__":
            continue
        if inspect.isasyncgenfunction(async_method):
            assert inspect.isgeneratorfunction(sync_method), name
        else:
            assert inspect.iscoroutinefunction(async_method), name
            assert not inspect.iscoroutinefunction(sync_method), name
            assert not inspect.isgeneratorfunction(sync_method), name
