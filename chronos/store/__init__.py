"""Record stores behind one narrow protocol: KV (authoritative), SQLite (archive), memory (tests)."""

from .base import Entry, Store

__all__ = ["Entry", "Store"]
