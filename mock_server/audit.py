"""Encrypted audit trail of writes and key events (read back by GET /api/audit).

Only the operation name and time are in clear (for filtering); the key id is stored as a
blind index, everything else (label, resource, target, details) is encrypted per row.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mock_server.crypto import KeyRing, aad
from mock_server.storage import Storage, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS audit_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        rid TEXT NOT NULL,
        ts REAL NOT NULL,
        operation TEXT NOT NULL,
        key_bidx BLOB,
        data BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log(ts);
    CREATE INDEX IF NOT EXISTS audit_log_key ON audit_log(key_bidx, seq);
    """
)

MAX_LIMIT = 1000


@dataclass(frozen=True)
class AuditRecord:
    id: str
    time: float
    key_id: str | None
    label: str | None
    operation: str
    resource: str | None
    target_id: str | None
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "key_id": self.key_id,
            "label": self.label,
            "operation": self.operation,
            "resource": self.resource,
            "target_id": self.target_id,
            "details": self.details,
        }


class AuditLog:
    """Append and query audit records."""

    def __init__(self, storage: Storage, keyring: KeyRing) -> None:
        self._storage = storage
        self._keyring = keyring

    def _bidx(self, key_id: str) -> bytes:
        return self._keyring.blind_index("audit", "key_id", key_id)

    def record(
        self,
        operation: str,
        *,
        key_id: str | None,
        label: str | None = None,
        resource: str | None = None,
        target_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> str:
        """Append one record; joins the caller's transaction if one is open."""
        rid = secrets.token_hex(12)
        body = {
            "key_id": key_id,
            "label": label,
            "resource": resource,
            "target_id": target_id,
            "details": dict(details or {}),
        }
        sealed = self._keyring.encrypt(
            "audit", "", json.dumps(body, separators=(",", ":")).encode(), aad("audit", rid)
        )
        with self._storage.transaction() as conn:
            conn.execute(
                "INSERT INTO audit_log(rid, ts, operation, key_bidx, data) VALUES (?,?,?,?,?)",
                (rid, time.time(), operation, None if key_id is None else self._bidx(key_id),
                 sealed),
            )
        return rid

    def query(
        self,
        *,
        limit: int = 100,
        since: float | None = None,
        key_id: str | None = None,
        operation: str | None = None,
    ) -> list[AuditRecord]:
        """Newest first."""
        sql = "SELECT rid, ts, operation, data FROM audit_log WHERE 1=1"
        args: list[Any] = []
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if key_id is not None:
            sql += " AND key_bidx = ?"
            args.append(self._bidx(key_id))
        if operation is not None:
            sql += " AND operation = ?"
            args.append(operation)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(max(1, min(limit, MAX_LIMIT)))
        out: list[AuditRecord] = []
        for rid, ts, op, sealed in self._storage.conn.execute(sql, args).fetchall():
            body = json.loads(self._keyring.decrypt("audit", "", sealed, aad("audit", rid)))
            out.append(
                AuditRecord(
                    id=rid,
                    time=ts,
                    key_id=body.get("key_id"),
                    label=body.get("label"),
                    operation=op,
                    resource=body.get("resource"),
                    target_id=body.get("target_id"),
                    details=body.get("details") or {},
                )
            )
        return out
