"""Internal wallet service: a double-entry ledger of virtual credits on PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The one version number is pyproject.toml's, as installed (CHANGELOG.md names the same).
    __version__ = version("wallet")
except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
    __version__ = "0+unknown"
