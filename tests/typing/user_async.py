"""A typed user program: what mypy --strict must infer for the asyncio client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from typing_extensions import assert_type, reveal_type

from ekoclient import AsyncAuthenticator, AsyncClient, AsyncCredentialsView, RawResponse


class Order(BaseModel):
    total: int


async def main(client: AsyncClient, key: str) -> None:
    view: AsyncCredentialsView = AsyncAuthenticator(client).using_credentials(key)
    ds = view.datastore
    assert_type(await ds.get("orders", "1"), dict[str, Any])
    assert_type(await ds.get("orders", "1", model=Order), Order)
    assert_type(await ds.find("orders"), list[dict[str, Any]])
    assert_type(await ds.find("orders", model=Order), list[Order])
    assert_type(await ds.update("orders", "1", Order(total=3)), dict[str, Any])
    raw = await client.with_raw_response.datastore.find("orders")
    assert_type(raw, RawResponse[Any])
    assert_type(client.with_options(max_retries=1), AsyncClient)
    reveal_type(await ds.find("orders", model=Order))
    await client.kv.delete("k", idempotency_key="op-1")
    assert_type(await ds.upsert("orders", "1", Order(total=1), idempotency_key="op-2"),
                dict[str, Any])
    async with client.datastore.transaction() as tx:
        await tx.rollback(idempotency_key="op-3")
    pending = view.datastore.get("o", "1", model=Order)
    _ = pending.total  # type: ignore[attr-defined]  # a coroutine: forgot the await
