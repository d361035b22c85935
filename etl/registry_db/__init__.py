"""The registry's database: its tables and migrations (tables.py), the transactions that read and change
them (store.py) and the leases that keep one trainer (and one uploader) at a time across hosts (lease.py).
etl/registry/ puts it together with the artifact store."""

from etl.registry_db.tables import MIGRATIONS

__all__ = ["MIGRATIONS"]
