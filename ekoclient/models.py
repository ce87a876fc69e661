"""Result objects returned by the services (pydantic v2 models, attribute names fixed by SPEC §3).

Models ignore fields they do not know, so a newer server does not break an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ApiKeyInfo",
    "AuditRecord",
    "BatchFailure",
    "BatchResult",
    "NewApiKey",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class NewApiKey(_Model):
    """A key just created or rotated. ``api_key`` is shown this once; store it safely."""

    api_key: str = Field(repr=False)
    key_id: str
    label: str
    created_at: datetime


class ApiKeyInfo(_Model):
    """What the service knows about a key; never its secret."""

    key_id: str
    label: str
    description: str | None = None
    is_admin: bool = False
    read_only: bool = False
    collection_permissions: dict[str, Any] = Field(default_factory=dict)
    allowed_ips: list[str] = Field(default_factory=list)
    tier: str | None = None
    created_at: datetime | None = None


class AuditRecord(_Model):
    """One audited write or key event."""

    time: datetime
    key_id: str | None = None
    label: str | None = None
    operation: str
    resource: str | None = None
    target_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class BatchFailure(_Model):
    """One item of a batch that was not applied: its id (or index) and why."""

    id: str | None = None
    index: int | None = None
    code: str
    message: str


class BatchResult(_Model):
    """Per-item outcome of a batch call: ids that succeeded, items that failed."""

    successful: list[str] = Field(default_factory=list)
    failed: list[BatchFailure] = Field(default_factory=list)
