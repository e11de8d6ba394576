"""Stores: where runs, their state and their journals live (Memory, SQLite, PostgreSQL).

`PostgresStore` needs the `postgres` extra (psycopg 3, psycopg-pool); importing this
package does not: the driver is imported when a PostgresStore is made.
"""

from .memory import MemoryStore
from .postgres import PostgresStore
from .sqlite import SqliteStore

__all__ = ["MemoryStore", "PostgresStore", "SqliteStore"]
