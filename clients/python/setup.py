"""The package's metadata is in pyproject.toml; this file only makes the build write the
synchronous client (client.py) from the asyncio one first (unasync_client.py), for wheels and
editable installs alike."""

from __future__ import annotations

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSyncClient(build_py):
    def run(self) -> None:
        runpy.run_path(str(Path(__file__).resolve().parent / "unasync_client.py"))["write"]()
        super().run()


setup(cmdclass={"build_py": BuildPyWithSyncClient})
