"""A byte scan of the data dir finds no plaintext label/description and no API key."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.server.conftest import Api


def scan(data_dir: Path, needles: list[bytes]) -> list[tuple[str, bytes]]:
    hits = []
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files), "WAL file expected"
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            if needle in data:
                hits.append((path.name, needle))
    return hits


def test_no_plaintext_secrets_or_labels_on_disk(api: Api) -> None:
    marker = uuid.uuid4().hex
    label = f"LABEL{marker}"
    description = f"DESCRIPTION{marker}"
    idem = {"Idempotency-Key": f"idem-{marker}"}
    made = api.http.post(
        "/api/auth/register", headers={**api.admin, **idem},
        json={"label": label, "description": description,
              "collection_permissions": {f"coll{marker}": ["read"]},
              "allowed_ips": ["192.0.2.0/24"]},
    ).json()
    rotated = api.http.post(f"/api/auth/keys/{made['key_id']}/rotate", headers=api.admin).json()
    api.http.put(f"/api/auth/keys/{made['key_id']}", headers=api.admin,
                 json={"description": description + "v2"})
    needles = [label.encode(), description.encode(), marker.encode(),
               made["api_key"].encode(), rotated["api_key"].encode(),
               api.info.admin_key.encode(),
               # the random part whole: it may itself contain "_", so split twice only
               made["api_key"].split("_", 2)[2].encode()]
    assert scan(api.info.data_dir, needles) == []


def test_scan_detects_plaintext(tmp_path: Path) -> None:
    """The scanner itself finds a planted value (so the test above can fail)."""
    (tmp_path / "x.sqlite3-wal").write_bytes(b"..LABELabc..")
    assert scan(tmp_path, [b"LABELabc"]) == [("x.sqlite3-wal", b"LABELabc")]
