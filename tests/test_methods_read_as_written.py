"""help(), inspect.signature and IDEs see each service method as it is written."""

from __future__ import annotations

import inspect
import pydoc
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from uuid import UUID

import pytest
from pydantic import BaseModel

from ekoclient import AsyncAuthenticator, AsyncClient, Authenticator, Client
from ekoclient._tokens import hint_for
from ekoclient.errors import ConfigurationError, InvalidArgumentError


def test_a_method_shows_its_real_name_parameters_defaults_and_doc() -> None:
    with Client(base_url="https://127.0.0.1:9") as client:
        find = client.datastore.find
        assert find.__name__ == "find"
        params = inspect.signature(find).parameters
        assert list(params)[:3] == ["collection", "filter", "sort"]
        assert params["filter"].default is None
        assert params["limit"].kind is inspect.Parameter.KEYWORD_ONLY
        assert "idempotency_key" not in params  # find changes nothing
        assert "Records matching" in (find.__doc__ or "")
        text = pydoc.render_doc(find, renderer=pydoc.plaintext)
        assert "find(collection: 'str', filter: 'FilterArg' = None, *, sort" in text


def test_writes_show_the_idempotency_key_keyword() -> None:
    with Client(base_url="https://127.0.0.1:9") as client:
        sig = inspect.signature(client.datastore.insert)
        assert str(sig) == ("(collection: 'str', record: 'Record', *, "
                            "ttl: 'float | dt.timedelta | None' = None, "
                            "idempotency_key: 'str | None' = None) -> 'dict[str, Any]'")
        send = inspect.signature(client.queue.send)
        assert list(send.parameters) == ["queue", "message", "idempotency_key"]  # no prefix
        assert client.dedup_queue.ack.__name__ == "ack"


def test_help_on_the_class_lists_methods_with_their_signatures() -> None:
    from ekoclient._services.datastore import DataStore

    text = pydoc.render_doc(DataStore, renderer=pydoc.plaintext)
    assert "batch_delete(self, collection: 'str', ids: 'Iterable[str] | None' = None" in text
    for name in ("get", "find", "insert", "update", "delete", "create_collection"):
        assert f" |  {name}(self, " in text, name


async def test_async_methods_read_the_same() -> None:
    async with AsyncClient(base_url="https://127.0.0.1:9") as client:
        sig = inspect.signature(client.admin.rotate_key)
        assert str(sig) == ("(key_id: 'str', *, idempotency_key: 'str | None' = None)"
                            " -> 'Awaitable[NewApiKey]'")
        assert client.admin.create_key.__name__ == "create_key"


def test_an_authenticator_refuses_the_other_flavour_of_client_at_once() -> None:
    with Client(base_url="https://127.0.0.1:9") as sync_client:
        with pytest.raises(ConfigurationError, match=r"AsyncAuthenticator\(async_client\)"):
            Authenticator(AsyncClient(base_url="https://127.0.0.1:9"))  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"use Authenticator\(client\)"):
            AsyncAuthenticator(sync_client)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="needs a Client"):
            Authenticator("https://127.0.0.1:9")  # type: ignore[arg-type]


# --- writes accept models and JSON-able values -------------------------------------------

class Payment(BaseModel):
    id: str | None = None
    payment_id: UUID
    amount: Decimal
    at: datetime
    note: str | None = None


def test_insert_and_read_back_a_model_with_uuid_decimal_and_datetime(admin: Client) -> None:
    name = f"pay{uuid.uuid4().hex[:8]}"
    admin.datastore.create_collection(name)
    sent = Payment(payment_id=uuid.uuid4(), amount=Decimal("1234567890.123456789"),
                   at=datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc))
    stored = admin.datastore.insert(name, sent)
    back = admin.datastore.get(name, stored["id"], model=Payment)
    assert back.model_dump(exclude={"id"}) == sent.model_dump(exclude={"id"})
    assert back.id == stored["id"]
    # update with a partial model: only the fields set on it change
    admin.datastore.update(name, stored["id"], Payment.model_construct(note="refund"))
    after = admin.datastore.get(name, stored["id"], model=Payment)
    assert after.note == "refund" and after.amount == sent.amount


def test_plain_dicts_may_hold_datetimes_uuids_and_decimals(admin: Client) -> None:
    name = f"pay{uuid.uuid4().hex[:8]}"
    admin.datastore.create_collection(name)
    ident = uuid.uuid4()
    stored = admin.datastore.insert(name, {"ref": ident, "price": Decimal("9.99"),
                                           "day": datetime(2026, 1, 2, 3, 4, 5)})
    assert stored["ref"] == str(ident)
    assert stored["price"] == "9.99"
    assert stored["day"] == "2026-01-02T03:04:05"
    result = admin.datastore.batch_insert(name, [Payment(
        payment_id=ident, amount=Decimal(1), at=datetime(2026, 1, 1))])
    assert len(result.successful) == 1


def test_a_value_json_cannot_hold_is_refused_before_sending(admin: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        admin.datastore.insert("anything", {"x": object()})


# --- key hints -----------------------------------------------------------------------------

@pytest.mark.parametrize("secret", [
    "AbCdEfGh" * 5 + "xyz",            # no underscore
    "Ab_CdEfGh_" * 4 + "xyz",          # underscores in the random part
    "_" + "Q" * 42,                    # random part starting with "_"
    "a" * 42 + "_",                     # ... and ending with it
])
def test_a_key_hint_is_its_prefix_and_a_fingerprint_never_secret_characters(
        secret: str) -> None:
    import hashlib

    key = "eko_test_" + secret
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:6]
    assert hint_for(key) == f"eko_test_…#{fingerprint}"


def test_a_key_of_another_shape_gets_only_a_fingerprint() -> None:
    for key in ("sk-live-0123456789abcdefghij", "eko_ABCDEF_ghijklmnopqrstuvwxyz",
                "eko_" + "Z" * 43):
        hint = hint_for(key)
        assert hint.startswith("…#") and len(hint) == 8, (key, hint)


def test_hints_of_many_keys_have_one_length_and_tell_keys_apart() -> None:
    import secrets as s

    keys = ["eko_live_" + s.token_urlsafe(32) for _ in range(2000)]
    hints = {hint_for(k) for k in keys}
    assert {len(h) for h in hints} == {len("eko_live_…#123456")}
    assert len(hints) > 1990  # 24-bit fingerprints: collisions are rare, not impossible



def _public_methods(services: object) -> list[tuple[str, object]]:
    from ekoclient._service import Service

    out = []
    for attr in dir(services):
        service = getattr(services, attr, None) if not attr.startswith("_") else None
        if not isinstance(service, Service):
            continue
        for name in dir(service):
            method = getattr(service, name)
            if not name.startswith("_") and callable(method):
                out.append((f"{attr}.{name}", method))
    return out


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_every_service_method_has_its_name_and_real_parameters(flavour: str) -> None:
    client = (Client if flavour == "sync" else AsyncClient)(base_url="https://127.0.0.1:9")
    methods = _public_methods(client)
    assert len(methods) > 50
    for path, method in methods:
        assert getattr(method, "__name__", None) == path.split(".")[1], path
        params = inspect.signature(method).parameters.values()  # type: ignore[arg-type]
        kinds = {p.kind for p in params}
        assert inspect.Parameter.VAR_POSITIONAL not in kinds, (path, kinds)
        assert (method.__doc__ or "").strip(), path
