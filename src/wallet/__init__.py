"""Internal wallet service: a double-entry ledger of virtual credits on PostgreSQL."""

__version__ = "0.1.0"
