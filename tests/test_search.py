"""DataStore search and live change feeds through the SDK, against the reference server:
sync, async and credential views; typed hits; field rules; errors."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ekoclient import AsyncAuthenticator, AsyncClient, Authenticator, Client, where
from ekoclient._changes import SSEDecoder
from ekoclient.errors import (
    AuthenticationError,
    InvalidArgumentError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from ekoclient.models import MutationNotification, SearchHit


@pytest.fixture
def docs(admin: Client) -> Iterator[str]:
    name = f"sdk_search_{uuid.uuid4().hex[:8]}"
    admin.datastore.create_collection(name)
    admin.datastore.batch_insert(name, [
        {"title": "Intro to machine learning", "body": "models learn", "team": "a",
         "secret": "learning", "embedding": [0.0, 1.0]},
        {"title": "Cooking", "body": "machine washing dishes", "team": "b",
         "embedding": [1.0, 0.0]},
        {"title": "Gardening", "body": "plants", "team": "a", "embedding": [0.7, 0.7]},
    ])
    yield name
    admin.datastore.drop_collection(name)


def test_text_search_returns_typed_hits_best_first(admin: Client, docs: str) -> None:
    hits = admin.datastore.search(docs, "machine learning")
    assert all(isinstance(h, SearchHit) for h in hits)
    assert [h.record["title"] for h in hits] == ["Intro to machine learning", "Cooking"]
    assert hits[0].score == 1.0 > hits[1].score
    assert hits[0].matched_fields == ["secret", "title"]
    assert admin.datastore.search(docs, "machne", fields=["title"], fuzzy=True)[0].record[
        "title"] == "Intro to machine learning"
    assert admin.datastore.search(docs, "learning machine", limit=1)[0].record["title"] == \
        "Intro to machine learning"


def test_vector_hybrid_and_filter(admin: Client, docs: str) -> None:
    near = admin.datastore.search(docs, vector=[1.0, 0.0], limit=2)
    assert [h.record["title"] for h in near] == ["Cooking", "Gardening"]
    dot = admin.datastore.search(docs, vector=[0.0, 2.0], metric="dot", limit=1)
    assert dot[0].score == 2.0
    team_a = admin.datastore.search(docs, vector=[1.0, 0.0], filter=where("team").eq("a"))
    assert [h.record["title"] for h in team_a] == ["Gardening", "Intro to machine learning"]
    hybrid = admin.datastore.search(docs, "machine", vector=[1.0, 0.0], text_weight=0.2,
                                    vector_weight=0.8)
    assert hybrid[0].record["title"] == "Cooking"
    assert hybrid[0].matched_fields == ["body", "embedding"]


def test_views_search_with_their_own_field_rules(admin: Client, docs: str) -> None:
    key = admin.admin.create_key("searcher", collection_permissions={
        docs: {"read": True, "exclude_fields": ["secret"]}}).api_key
    view = Authenticator(admin).using_credentials(key)
    hits = view.datastore.search(docs, "learning")
    assert [h.record["title"] for h in hits] == ["Intro to machine learning"]
    assert hits[0].matched_fields == ["title"] and "secret" not in hits[0].record
    with pytest.raises(PermissionDeniedError):
        view.datastore.search(docs, "x", fields=["secret"])
    outsider = admin.admin.create_key("outsider", collection_permissions={"zz_*": ["read"]})
    with pytest.raises(PermissionDeniedError):
        Authenticator(admin).using_credentials(outsider.api_key).datastore.search(docs, "x")


def test_bad_arguments_fail_before_or_at_the_service(admin: Client, docs: str) -> None:
    with pytest.raises(InvalidArgumentError):
        admin.datastore.search(docs)
    with pytest.raises(InvalidArgumentError):
        admin.datastore.search(docs, "x", metric="manhattan")
    with pytest.raises(InvalidArgumentError):
        admin.datastore.search(docs, "x", fields="title")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        admin.datastore.search(docs, "x", limit=5000)
    with pytest.raises(NotFoundError):
        admin.datastore.search("sdk_search_missing_zz", "x")


async def test_async_client_and_async_views_search(async_admin: AsyncClient,
                                                   admin: Client, docs: str) -> None:
    hits = await async_admin.datastore.search(docs, "gardening")
    assert [h.record["title"] for h in hits] == ["Gardening"]
    key = admin.admin.create_key("asearch", read_only=True,
                                 collection_permissions={docs: ["read"]}).api_key
    view = AsyncAuthenticator(async_admin).using_credentials(key)
    assert (await view.datastore.search(docs, vector=[0.0, 1.0], limit=1))[0].record[
        "title"] == "Intro to machine learning"


# ------------------------------------------------------------------------------ change feeds


def test_sse_decoder_handles_split_chunks_comments_and_multiline_data() -> None:
    dec = SSEDecoder()
    assert dec.feed(b": keepalive\n\nevent: mut") == []
    assert dec.feed(b"ation\ndata: {\"a\":\r\ndata: 1}\n") == []
    assert dec.feed(b"\n") == [("mutation", '{"a":\n1}')]


def test_sse_decoder_bounds_an_event_split_over_many_data_lines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ekoclient._changes as changes

    monkeypatch.setattr(changes, "MAX_EVENT", 64)
    dec = SSEDecoder()
    with pytest.raises(MalformedResponseError, match="larger than"):
        for _ in range(20):  # each line is small; together they pass the bound
            dec.feed(b"data: " + b"x" * 10 + b"\n")


def test_sse_decoder_and_stream_turn_garbage_into_malformed_response() -> None:
    from ekoclient._changes import _StreamBase

    with pytest.raises(MalformedResponseError, match="UTF-8"):
        SSEDecoder().feed(b"data: \xff\xfe\n\n")
    stream = _StreamBase(None)  # type: ignore[arg-type]  # sans-I/O: no response is read
    stream._pending.append(("mutation", '{"event": 5}'))
    with pytest.raises(MalformedResponseError, match="unexpected shape"):
        stream._take()


def test_changes_survive_an_edit_of_the_key_that_keeps_its_rights(admin: Client,
                                                                  docs: str) -> None:
    import time

    new = admin.admin.create_key("relabel", collection_permissions={docs: ["read"]})
    view = Authenticator(admin).using_credentials(new.api_key)
    with view.datastore.changes(docs) as stream:
        admin.admin.update_key(new.key_id, label="relabelled")  # its tokens stop working
        edited = time.monotonic()
        while time.monotonic() - edited < 2.5:  # past at least two server re-checks
            rid = admin.datastore.insert(docs, {"title": "t"})["id"]
            note = next(stream)
            assert note.event == "insert" and note.record_ids == [rid]


def test_changes_streams_projected_notifications(admin: Client, docs: str) -> None:
    key = admin.admin.create_key("watcher", collection_permissions={
        docs: {"read": True, "exclude_fields": ["secret"]}}).api_key
    view = Authenticator(admin).using_credentials(key)
    seen: list[MutationNotification] = []
    with view.datastore.changes(docs) as stream:
        # the feed is registered once changes() returns: nothing written after is missed
        done = threading.Event()

        def write() -> None:
            rec = admin.datastore.insert(docs, {"title": "new", "secret": "s"})
            admin.datastore.update(docs, rec["id"], {"title": "newer"})
            admin.datastore.delete(docs, rec["id"])
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        for note in stream:
            seen.append(note)
            if len(seen) == 3:
                break
        writer.join()
        assert stream.subscription["collection"] == docs
    assert [n.event for n in seen] == ["insert", "update", "delete"]
    assert seen[0].records is not None and seen[0].records[0]["title"] == "new"
    assert all("secret" not in r for n in seen for r in n.records or [])
    assert seen[2].records is None and seen[2].record_ids == seen[0].record_ids


def test_changes_refused_without_read(admin: Client, docs: str) -> None:
    key = admin.admin.create_key("wo", collection_permissions={docs: ["write"]}).api_key
    with pytest.raises(PermissionDeniedError):
        Authenticator(admin).using_credentials(key).datastore.changes(docs)
    with pytest.raises(InvalidArgumentError):
        admin.datastore.changes(docs, filter_field="team")


def test_changes_raise_when_the_key_is_revoked(admin: Client, docs: str) -> None:
    new = admin.admin.create_key("revoked", collection_permissions={docs: ["read"]})
    view = Authenticator(admin).using_credentials(new.api_key)
    with view.datastore.changes(docs) as stream:
        admin.admin.delete_key(new.key_id)
        with pytest.raises(AuthenticationError):
            next(stream)


async def test_async_changes_with_filter(async_admin: AsyncClient, docs: str) -> None:
    stream = await async_admin.datastore.changes(docs, filter_field="team", filter_value="b")
    async with stream:
        await async_admin.datastore.batch_insert(docs, [{"title": "skip", "team": "a"},
                                                        {"title": "keep", "team": "b"}])
        note: Any = await stream.__anext__()
    assert note.event == "insert" and [r["title"] for r in note.records] == ["keep"]
