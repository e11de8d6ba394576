"""Stores: where runs, their state and their journals live (Memory, SQLite)."""

from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["MemoryStore", "SqliteStore"]
