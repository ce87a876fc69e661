"""Errors a user can act on: they pickle, they say what to do, they name what was missing."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from ekoclient import AsyncClient, Client, errors


def _every_error() -> list[errors.EkoError]:
    out: list[errors.EkoError] = []
    for name in errors.__all__:
        cls = getattr(errors, name)
        if not (isinstance(cls, type) and issubclass(cls, errors.EkoError)):
            continue
        if issubclass(cls, errors.RateLimitError):
            out.append(cls("slow down", request_id="r1", retry_after=2.5, limit=100,
                           remaining=0, reset=30.0))
        elif issubclass(cls, errors.APIError):
            out.append(cls("no such thing", status=404, code="not_found", request_id="r2"))
        else:
            out.append(cls("it broke"))
    return out


@pytest.mark.parametrize("error", _every_error(), ids=lambda e: type(e).__name__)
def test_every_exception_survives_pickling_with_its_fields(error: errors.EkoError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def _get_missing(url: str, key: str, ca: str) -> None:
    with Client(base_url=url, api_key=key, ca_bundle=ca) as client:
        client.datastore.create_collection("pickled")
        client.datastore.get("pickled", "no-such-record")


def test_a_not_found_error_raised_in_a_process_pool_worker_reaches_the_parent(
        ekodb_server: Any) -> None:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        future = pool.submit(_get_missing, ekodb_server.url, ekodb_server.admin_key,
                             str(ekodb_server.ca_bundle))
        with pytest.raises(errors.NotFoundError) as info:
            future.result(timeout=120)
        # the pool still works: the error did not break it
        assert pool.submit(len, "abc").result(timeout=60) == 3
    assert info.value.status == 404 and info.value.request_id


def test_a_closed_client_raises_client_closed_error_saying_what_to_do(
        ekodb_server: Any) -> None:
    client = Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                    ca_bundle=ekodb_server.ca_bundle)
    copy = client.with_options(timeout=5)
    client.close()
    for c in (client, copy):
        with pytest.raises(errors.ClientClosedError, match="create a new Client"):
            c.datastore.list_collections()


async def test_a_closed_async_client_raises_client_closed_error(ekodb_server: Any) -> None:
    client = AsyncClient(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                         ca_bundle=ekodb_server.ca_bundle)
    await client.aclose()
    with pytest.raises(errors.ClientClosedError, match="async with"):
        await client.datastore.list_collections()


def test_an_async_client_used_on_a_second_event_loop_says_to_make_one_per_loop(
        ekodb_server: Any) -> None:
    client = AsyncClient(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                         ca_bundle=ekodb_server.ca_bundle)

    async def use() -> list[str]:
        return await client.datastore.list_collections()

    assert isinstance(asyncio.run(use()), list)
    with pytest.raises(errors.EventLoopError, match="one AsyncClient per event loop"):
        asyncio.run(use())
    assert isinstance(errors.EventLoopError("x"), errors.EkoError)


def test_a_missing_blob_on_get_metadata_names_the_blob_and_table(admin: Client) -> None:
    table = f"t{uuid.uuid4().hex[:8]}"
    admin.blobstore.create_table(table)
    with pytest.raises(errors.NotFoundError) as info:
        admin.blobstore.get_metadata(table, "photo-17.png")
    message = str(info.value)
    assert "'photo-17.png'" in message and repr(table) in message
    assert info.value.request_id


def test_a_missing_collection_names_create_collection(admin: Client) -> None:
    with pytest.raises(errors.NotFoundError) as info:
        admin.datastore.insert(f"nope{uuid.uuid4().hex[:8]}", {"a": 1})
    assert info.value.code == "collection_not_found"
    assert "create_collection" in str(info.value)
