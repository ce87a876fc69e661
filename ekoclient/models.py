"""Result objects returned by the services (pydantic v2 models, attribute names fixed by SPEC §3).

Models ignore fields they do not know, so a newer server does not break an older client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

__all__ = [
    "AckResult",
    "ApiKeyInfo",
    "AuditRecord",
    "BatchFailure",
    "BatchResult",
    "BlobMetadata",
    "ConsumeStats",
    "Event",
    "Message",
    "MutationNotification",
    "NewApiKey",
    "Page",
    "PollResult",
    "RenewResult",
    "SearchHit",
    "Subscription",
]


class _Model(BaseModel):
    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="ignore")


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
    #: Requests per rate-limit window set on this key; None = its tier's limit.
    rate_limit: int | None = None
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


class BlobMetadata(_Model):
    """What the BlobStore recorded for one blob; ``md5`` and ``sha256`` are hex digests.

    ``content_type`` is the type as uploaded (the service may serve a safer one).
    """

    table: str
    blob_id: str
    length: int
    md5: str
    sha256: str
    content_type: str = "application/octet-stream"
    timestamp: datetime
    attributes: dict[str, Any] = Field(default_factory=dict)


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


class Event(_Model):
    """One DataBus event: a record changed. ``content`` is its content now (projected through
    the subscriber's field rules), None after a delete. ``key`` is what you ack."""

    key: str
    collection: str
    record_id: str
    operation: str
    content: dict[str, Any] | None = None
    timestamp: datetime


class PollResult(_Model):
    """Events claimed by one poll; ``has_more`` means poll again at once."""

    events: list[Event] = Field(default_factory=list)
    has_more: bool = False


class Subscription(_Model):
    """A DataBus subscription: which collections (names or ``*`` patterns) and records."""

    name: str
    collections: list[str]
    filter: dict[str, Any] | None = None
    ttl: float
    event_ttl: float
    created_at: datetime | None = None
    expires_at: datetime | None = None


class Message(_Model):
    """One Queue/DedupQueue message. ``id`` is what you ack or renew: an id from ``poll``
    names this claim of the message, so it goes stale once another consumer claims it."""

    id: str
    payload: Any = None


class AckResult(_Model):
    """Ids acked, and ids that were stale (message gone, or claimed again by another poll)."""

    acked: list[str] = Field(default_factory=list)
    stale: list[str] = Field(default_factory=list)


class RenewResult(_Model):
    """Ids whose claim was extended, and ids that were stale (their claim was lost)."""

    renewed: list[str] = Field(default_factory=list)
    stale: list[str] = Field(default_factory=list)


class ConsumeStats(_Model):
    """What one ``consume()`` run did: handler calls that succeeded and were acked, that
    raised (left to expire), and claims found lost on renew or ack (may be redelivered)."""

    acked: int = 0
    failed: int = 0
    lost: int = 0
    polls: int = 0


class SearchHit(_Model):
    """One search result: the record (as the key may see it), its relevance ``score`` and
    the fields that matched (text fields, plus the vector field in vector/hybrid search)."""

    record: dict[str, Any]
    score: float
    matched_fields: list[str] = Field(default_factory=list)


class MutationNotification(_Model):
    """One live change notification (ekoDB's ``MutationNotification``): ``event`` is
    ``insert``, ``update`` or ``delete``; ``records`` are the records now (projected through
    the key's field rules), None for deletes. One batch write may be one notification."""

    collection: str
    event: str
    record_ids: list[str] = Field(default_factory=list)
    records: list[dict[str, Any]] | None = None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of ``find_page``: ``items``, whether more match (``has_more``), and the
    cursor that fetches them (``next_cursor``, None when there are no more).

    The cursor is a keyset position (the last item's sort values and place), so the next page
    starts right after it even when records are inserted or deleted in between. Pass it back
    with the same collection, filter and sort.
    """

    items: list[T]
    has_more: bool
    next_cursor: str | None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
