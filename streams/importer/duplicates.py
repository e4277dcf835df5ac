"""Duplicates within the file: which (lead, event id) pairs this import has already produced,
kept on disk so memory does not grow with the file."""

from __future__ import annotations

import hashlib
import sqlite3


class SeenIds:
    """Which (lead, event_id) pairs this import has already produced, in a temporary SQLite table
    (8-byte fingerprints; the page cache is bounded, so memory does not grow with the file)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("")  # a private temporary on-disk database, gone on close
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-4096")  # 4 MiB of pages at most
        self.db.execute("CREATE TABLE seen (fp INTEGER PRIMARY KEY)")
        self.cur = self.db.cursor()

    def add(self, lead_id: str, event_id: str) -> bool:
        """True the first time a pair is seen."""
        digest = hashlib.blake2b(f"{lead_id}\x00{event_id}".encode(), digest_size=8).digest()
        self.cur.execute(
            "INSERT OR IGNORE INTO seen VALUES (?)", (int.from_bytes(digest, "big", signed=True),)
        )
        return self.cur.rowcount == 1

    def close(self) -> None:
        self.db.close()
