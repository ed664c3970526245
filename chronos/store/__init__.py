"""Record stores behind one narrow protocol: KV (authoritative), SQLite (single box, offline), memory (tests).

One conformance suite (tests/integration/test_store_conformance.py) runs against all three.
The history archive is not a Store: it lives in chronos/archive.py (the file) and chronos/scheduler/archiver.py (the service).
"""

from .base import Entry, Store

__all__ = ["Entry", "Store"]
