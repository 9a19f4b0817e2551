"""Garbage collection and verification: each takes the store lock alone (no writer meanwhile, in any process).
Part of Store (edge/store/repo.py)."""

import os
from dataclasses import dataclass, field

from edge.ipld.cid import parse_cid
from edge.store.catalog import LIVE_SQL
from edge.store.errors import CorruptBlock


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphans: int = 0
    damaged_pins: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.damaged_pins)


class Maintenance:
    """Store's GC and verify (self.catalog, self.files, self.hot; the lock from Store)."""

    def gc(self) -> tuple[int, int]:
        """Remove every block no pin keeps, and stray files; returns (blocks removed, bytes freed)."""
        self._exclusive("gc")
        try:
            def collect(db):
                db.execute(f"CREATE TEMP TABLE IF NOT EXISTS live_now AS {LIVE_SQL}")
                db.execute("DELETE FROM temp.live_now")
                db.execute(f"INSERT INTO temp.live_now {LIVE_SQL}")
                dead = db.execute("SELECT cid, size FROM blocks WHERE cid NOT IN (SELECT cid FROM temp.live_now)"
                                  ).fetchall()
                db.execute("DELETE FROM blocks WHERE cid NOT IN (SELECT cid FROM temp.live_now)")
                db.execute("DELETE FROM links WHERE parent NOT IN (SELECT cid FROM blocks)")
                db.execute("DELETE FROM access WHERE cid NOT IN (SELECT cid FROM blocks)")
                db.execute("DROP TABLE temp.live_now")
                return dead
            dead = self.catalog.write(collect)
            for k, _ in dead:
                self.files.remove(parse_cid(k))
                if self.hot is not None:
                    self.hot.drop(parse_cid(k).v1_bytes())
            freed = sum(size for _, size in dead)
            removed = len(dead)
            listed = None
            for name, path in self.files.iter_files():   # files no catalog row names: a crash's leftovers
                if listed is None:
                    listed = {r[0] for r in self.catalog.rows("SELECT cid FROM blocks")}
                if name not in listed:
                    size = os.path.getsize(path)
                    os.unlink(path)
                    removed += 1
                    freed += size
            self.files.clean_stale_tmp()
            return removed, freed
        finally:
            self.release()

    def verify(self, progress=None) -> VerifyReport:
        """Re-hash every block; quarantine and report the corrupt ones; report pins whose DAG is incomplete."""
        self._exclusive("verify")
        try:
            report = VerifyReport()
            rows = self.catalog.rows("SELECT cid, size FROM blocks")
            listed = set()
            for k, size in rows:
                listed.add(k)
                cid = parse_cid(k)
                try:
                    self._read(cid)
                    report.checked += 1
                    report.bytes += size
                except CorruptBlock as exc:
                    (report.missing if "gone" in str(exc) else report.corrupt).append(k)
                if progress:
                    progress(size)
            report.orphans = sum(1 for name, _ in self.files.iter_files() if name not in listed)
            for pin in self.pins():
                if pin["kind"] == "recursive":
                    _, missing = self.dag(parse_cid(pin["cid"]))
                else:
                    missing = [] if self.has(parse_cid(pin["cid"])) else [pin["cid"]]
                if missing:
                    report.damaged_pins.append(pin["cid"])
            return report
        finally:
            self.release()
