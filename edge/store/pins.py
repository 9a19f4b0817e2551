"""Pins and names: what the store keeps (a recursive pin keeps a root's whole DAG), and stable names for roots
that change (a stream and its current manifest). Part of Store (edge/store/repo.py), whose catalog it uses."""

import json
import time

from edge.ipld.cid import CID, IDENTITY, parse_cid
from edge.store.catalog import DAG_SQL, LIVE_SQL, key
from edge.store.errors import StoreError


def _name_row(row) -> dict:
    name, cid, kind, updated, meta = row
    return {"name": name, "cid": cid, "kind": kind, "updated": updated, "meta": json.loads(meta or "{}")}


def _dag(db, cid: CID) -> tuple[int, list[str]]:
    rows = db.execute(DAG_SQL, (key(cid),)).fetchall()
    held = sum(size for _, size in rows if size is not None)
    missing = [c for c, size in rows if size is None and parse_cid(c).hash_code != IDENTITY]
    return held, missing


class Pins:
    """Store's pins and names (self.catalog: edge/store/catalog.py)."""

    def dag(self, cid: CID) -> tuple[int, list[str]]:
        """(bytes held, CIDs missing) for the DAG under cid, as far as the catalog's links reach."""
        with self.catalog.read() as db:
            return _dag(db, cid)

    def pin(self, cid: CID, *, recursive: bool = True, name: str | None = None) -> None:
        """Keep cid (and, recursively, everything under it). StoreError if any block is missing.

        The check and the pin are one transaction: an eviction (which deletes rows in one too) either comes
        first and the check sees the hole, or after and sees the pin."""
        kind = "recursive" if recursive else "direct"

        def pin(db):
            if recursive:
                _, missing = _dag(db, cid)
                if missing:
                    raise StoreError(f"cannot pin {cid}: {len(missing)} block(s) under it are not on this node "
                                     f"(first: {missing[0]}); add or import the whole content first")
            elif cid.hash_code != IDENTITY and db.execute("SELECT 1 FROM blocks WHERE cid = ?",
                                                          (key(cid),)).fetchone() is None:
                raise StoreError(f"cannot pin {cid}: this node does not hold it")
            row = db.execute("SELECT kind FROM pins WHERE cid = ?", (key(cid),)).fetchone()
            if row and row[0] == "recursive" and kind == "direct":
                return   # a recursive pin already keeps it
            db.execute("INSERT OR REPLACE INTO pins VALUES (?, ?, ?, ?)", (key(cid), kind, name, time.time()))
        self.catalog.write(pin)

    def unpin(self, cid: CID) -> None:
        def unpin(db):
            if db.execute("DELETE FROM pins WHERE cid = ?", (key(cid),)).rowcount == 0:
                raise StoreError(f"{cid} is not pinned")
        self.catalog.write(unpin)

    def unpin_named(self, name: str, keep: set[str] | None = None) -> int:
        """Drop every pin made under name (except the CIDs in keep); how many were dropped."""
        keep = keep or set()

        def unpin(db):
            rows = [r[0] for r in db.execute("SELECT cid FROM pins WHERE name = ?", (name,)) if r[0] not in keep]
            db.executemany("DELETE FROM pins WHERE cid = ? AND name = ?", [(c, name) for c in rows])
            return len(rows)
        return self.catalog.write(unpin)

    def pins(self) -> list[dict]:
        rows = self.catalog.rows("SELECT cid, kind, name, created FROM pins ORDER BY created")
        return [{"cid": c, "kind": k, "name": n, "created": t} for c, k, n, t in rows]

    def is_pinned(self, cid: CID) -> bool:
        return self.catalog.row("SELECT 1 FROM pins WHERE cid = ?", (key(cid),)) is not None

    def pinned_bytes(self) -> int:
        """Bytes of the blocks pins keep (recursive pins: their whole DAG)."""
        return int(self.catalog.row(f"SELECT total(size) FROM blocks WHERE cid IN ({LIVE_SQL})")[0])

    # names: a stable name for a root that changes (a stream and its current manifest) ---------------------

    def set_name(self, name: str, cid: CID, kind: str, meta: dict | None = None, *, pin: bool = True) -> None:
        """Point name at cid (pinned recursively); the root it pointed at before is unpinned unless another
        name or a pin of the user's keeps it."""
        if pin:
            self.pin(cid, name=f"{kind} {name}")

        def set_name(db):
            old = db.execute("SELECT cid FROM names WHERE name = ?", (name,)).fetchone()
            db.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?, ?, ?)",
                       (name, key(cid), kind, time.time(), json.dumps(meta or {})))
            if old and old[0] != key(cid):
                others = db.execute("SELECT 1 FROM names WHERE cid = ?", (old[0],)).fetchone()
                if not others:
                    db.execute("DELETE FROM pins WHERE cid = ? AND name = ?", (old[0], f"{kind} {name}"))
        self.catalog.write(set_name)

    def name(self, name: str) -> dict | None:
        row = self.catalog.row("SELECT name, cid, kind, updated, meta FROM names WHERE name = ?", (name,))
        return _name_row(row) if row else None

    def names(self, kind: str | None = None) -> list[dict]:
        rows = self.catalog.rows("SELECT name, cid, kind, updated, meta FROM names"
                                 + (" WHERE kind = ?" if kind else "") + " ORDER BY name", (kind,) if kind else ())
        return [_name_row(r) for r in rows]

    def drop_name(self, name: str) -> None:
        """Forget name and unpin its root (GC may then take the blocks)."""
        def drop(db):
            row = db.execute("SELECT cid, kind FROM names WHERE name = ?", (name,)).fetchone()
            if not row:
                raise StoreError(f"no stream or name {name!r} here; `hearth media ls` lists them")
            db.execute("DELETE FROM names WHERE name = ?", (name,))
            db.execute("DELETE FROM pins WHERE cid = ? AND name = ?", (row[0], f"{row[1]} {name}"))
        self.catalog.write(drop)
