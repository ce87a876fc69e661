"""A typed user program: what mypy --strict must infer for the blocking client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from typing_extensions import assert_type, reveal_type

from ekoclient import Authenticator, Client, CredentialsView, RawResponse, where
from ekoclient.models import BatchResult, NewApiKey


class User(BaseModel):
    id: str | None = None
    name: str
    age: int


def main(client: Client, key: str) -> None:
    view: CredentialsView = Authenticator(client).using_credentials(key)
    ds = view.datastore
    assert_type(ds.get("users", "1"), dict[str, Any])
    assert_type(ds.get("users", "1", model=User), User)
    assert_type(ds.find("users", where("age").gt(3)), list[dict[str, Any]])
    assert_type(ds.find("users", model=User, limit=5), list[User])
    assert_type(ds.insert("users", User(name="a", age=1)), dict[str, Any])
    assert_type(ds.insert("users", {"name": "a"}, idempotency_key="k-1"), dict[str, Any])
    assert_type(ds.batch_insert("users", [User(name="b", age=2)]), BatchResult)
    assert_type(client.admin.create_key("x"), NewApiKey)
    assert_type(client.with_options(timeout=2, max_retries=0), Client)
    assert_type(view.with_options(extra_headers={"X-Trace": "1"}), CredentialsView)
    raw = client.with_raw_response.datastore.get("users", "1")
    assert_type(raw, RawResponse[Any])
    assert_type(raw.status_code, int)
    reveal_type(ds.get("users", "1", model=User))
    client.datastore.get("users", "1", model=dict)  # type: ignore[type-var]
    client.datastore.find("users", limit="5")  # type: ignore[call-overload]
    client.datastore.insert("users", 42)  # type: ignore[arg-type]
    built = (Client.builder().base_url("https://127.0.0.1:8443").api_key(key)
             .retry(max_attempts=3).timeout(connect=1, read=2).build())
    assert_type(built, Client)
    assert_type(Client.from_env(api_key=key, verify=True), Client)
    Client.from_env(base_ur="https://h")  # type: ignore[call-arg]
    Client.builder().retry(max_attempt=3)  # type: ignore[call-arg]
    client.datastore.delete("users", "1", idempotency_key=7)  # type: ignore[arg-type]
    # every write takes the caller's own idempotency key, the newer ones included
    client.kv.set("k", 1, idempotency_key="op-1")
    client.kv.set_many({"k": 1}, ttl=5, idempotency_key="op-2")
    assert_type(client.kv.delete_many(["k"], idempotency_key="op-3"), list[str])
    assert_type(ds.increment("users", "1", "n", idempotency_key="op-4"), dict[str, Any])
    assert_type(ds.apply("users", "1", [("push", "tags", "a")], idempotency_key="op-5"),
                dict[str, Any])
    assert_type(ds.upsert("users", "1", User(name="c", age=3), idempotency_key="op-6"),
                dict[str, Any])
    assert_type(ds.restore("users", "1", idempotency_key="op-7"), bool)
    with client.datastore.transaction() as tx:
        tx.savepoint("sp", idempotency_key="op-8")
        tx.commit(idempotency_key="op-9")
    client.kv.set("k", 1, idempotency_key=7)  # type: ignore[arg-type]
    ds.increment("users", "1", "n", idempotency_ky="x")  # type: ignore[call-arg]
