"""JSON shapes of key objects (SPEC §3 NewApiKey / ApiKeyInfo)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mock_server.keys import KeyRecord


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def key_info(rec: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": rec.key_id,
        "label": rec.label,
        "description": rec.description,
        "is_admin": rec.is_admin,
        "read_only": rec.read_only,
        "collection_permissions": rec.scope().to_raw(),
        "allowed_ips": list(rec.allowed_ips),
        "tier": rec.tier,
        "rate_limit": rec.rate_limit,
        "created_at": iso(rec.created_at),
        #: the delegated admin that minted this key (revoked with it), else None
        "created_by": rec.created_by,
    }


def new_key(rec: KeyRecord, api_key: str) -> dict[str, Any]:
    return {
        "api_key": api_key,
        "key_id": rec.key_id,
        "label": rec.label,
        "created_at": iso(rec.created_at),
    }
