"""Collection schemas through the SDK, against the reference server (SPEC §3.1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ekoclient import Authenticator, Client
from ekoclient.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)

SCHEMA = {"fields": {
    "email": {"field_type": "string", "required": True, "unique": True,
              "regex": "[^@ ]+@[^@ ]+"},
    "age": {"field_type": "integer", "min": 0, "max": 150},
    "plan": {"field_type": "string", "enums": ["free", "pro"], "default": "free"},
    "tags": {"field_type": "array", "max": 3},
}}


@pytest.fixture
def people(admin: Client) -> Iterator[str]:
    name = f"people_{uuid.uuid4().hex[:8]}"
    admin.datastore.create_collection(name, schema=SCHEMA)
    yield name
    admin.datastore.drop_collection(name)


def test_schema_round_trips_in_ekodbs_shape(admin: Client, people: str) -> None:
    schema = admin.datastore.get_schema(people)
    assert schema["version"] == 1
    assert schema["fields"]["email"] == {"field_type": "string", "required": True,
                                         "unique": True, "regex": "[^@ ]+@[^@ ]+"}
    assert schema["fields"]["plan"]["default"] == "free"


def test_defaults_fill_missing_fields(admin: Client, people: str) -> None:
    stored = admin.datastore.insert(people, {"email": "a@x"})
    assert stored["plan"] == "free"
    assert admin.datastore.get(people, stored["id"])["plan"] == "free"


@pytest.mark.parametrize(("record", "field"), [
    ({"age": 3}, "email"),                               # required
    ({"email": "no-at-sign"}, "email"),                  # regex
    ({"email": "b@x", "age": 151}, "age"),               # max
    ({"email": "b@x", "age": "3"}, "age"),               # type
    ({"email": "b@x", "age": True}, "age"),              # a boolean is not an integer
    ({"email": "b@x", "plan": "gold"}, "plan"),          # enums
    ({"email": "b@x", "tags": [1, 2, 3, 4]}, "tags"),    # max on an array's length
])
def test_writes_that_break_it_are_refused_naming_the_field(admin: Client, people: str,
                                                           record: dict[str, object],
                                                           field: str) -> None:
    with pytest.raises(ValidationError) as err:
        admin.datastore.insert(people, record)
    assert repr(field) in err.value.message
    assert admin.datastore.find(people) == []


def test_updates_and_batches_are_checked_too(admin: Client, people: str) -> None:
    a = admin.datastore.insert(people, {"email": "a@x"})
    admin.datastore.insert(people, {"email": "b@x"})
    with pytest.raises(ValidationError, match="'email'"):
        admin.datastore.update(people, a["id"], {"email": "b@x"})
    with pytest.raises(ValidationError, match="'age'"):
        admin.datastore.update(people, a["id"], {"age": -1})
    result = admin.datastore.batch_insert(people, [{"email": "c@x"}, {"email": "a@x"}])
    assert len(result.successful) == 1 and len(result.failed) == 1
    assert result.failed[0].code == "unique_violation"
    assert sorted(r["email"] for r in admin.datastore.find(people)) == ["a@x", "b@x", "c@x"]


def test_unique_inside_a_transaction_sees_its_own_writes(admin: Client, people: str) -> None:
    with admin.datastore.transaction() as tx:
        tx.insert(people, {"email": "t@x"})
        with pytest.raises(ValidationError, match="unique"):
            tx.insert(people, {"email": "t@x"})
    assert [r["email"] for r in admin.datastore.find(people)] == ["t@x"]


def test_update_schema_must_hold_for_stored_records(admin: Client, people: str) -> None:
    admin.datastore.insert(people, {"email": "a@x", "age": 40})
    with pytest.raises(ConflictError, match="'age'"):
        admin.datastore.update_schema(people, {"age": {"max": 30}})
    updated = admin.datastore.update_schema(people, {"age": {"max": 50, "required": True},
                                                     "nick": {"field_type": "string"}})
    assert updated["version"] == 2 and updated["fields"]["age"]["max"] == 50
    assert admin.datastore.get_schema(people)["fields"]["nick"]["field_type"] == "string"
    with pytest.raises(ValidationError, match="'age'"):
        admin.datastore.insert(people, {"email": "b@x"})
    removed = admin.datastore.update_schema(people, {"age": {"required": None}})
    assert removed["fields"]["age"]["required"] is False


@pytest.mark.parametrize("schema", [
    {"fields": {"a": {"field_type": "colour"}}},
    {"fields": {"a": {"field_type": "string", "regex": "("}}},
    {"fields": {"a": {"field_type": "integer", "default": "x"}}},
    {"fields": {"a": {"field_type": "string", "sparkly": True}}},
    {"fields": {"id": {"field_type": "string"}}},
    {"fields": {"a.b": {"field_type": "string"}}},
    {"fields": []},
])
def test_a_bad_schema_creates_nothing(admin: Client, schema: dict[str, object]) -> None:
    name = f"bad_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ValidationError):
        admin.datastore.create_collection(name, schema=schema)
    assert name not in admin.datastore.list_collections()


def test_schema_permissions(admin: Client, people: str) -> None:
    reader = admin.admin.create_key("schema-reader",
                                    collection_permissions={people: ["read", "write"]})
    view = Authenticator(admin).using_credentials(reader.api_key)
    assert view.datastore.get_schema(people)["version"] == 1
    with pytest.raises(PermissionDeniedError):
        view.datastore.update_schema(people, {"age": {"min": 1}})
    with pytest.raises(PermissionDeniedError):
        view.datastore.get_schema("someone_elses")
    with pytest.raises(NotFoundError):
        admin.datastore.get_schema(f"missing_{uuid.uuid4().hex[:6]}")



def test_a_tenants_backtracking_regex_cannot_stall_the_server(admin: Client) -> None:
    """A key with admin on its own collection only sets ``(a+)+b``; a write that would make
    Python's ``re`` backtrack for seconds under the server's write lock is answered at once
    (RE2), and a pattern RE2 cannot run is refused when the schema is set."""
    import time

    mine = f"rx_{uuid.uuid4().hex[:8]}"
    tenant = Authenticator(admin).using_credentials(admin.admin.create_key(
        "rx-tenant", collection_permissions={mine: ["admin"]}).api_key)
    with pytest.raises(ValidationError, match="RE2"):
        tenant.datastore.create_collection(mine, schema={"fields": {
            "s": {"field_type": "string", "regex": r"(a+)\1b"}}})
    tenant.datastore.create_collection(mine, schema={"fields": {
        "s": {"field_type": "string", "regex": "(a+)+b"}}})
    try:
        tenant.datastore.insert(mine, {"s": "ab"})  # warm: token and connection
        started = time.monotonic()
        with pytest.raises(ValidationError, match="'s'"):
            tenant.datastore.insert(mine, {"s": "a" * 28})
        assert time.monotonic() - started < 2.0
        with pytest.raises(ConflictError, match="'s'"):  # update_schema checks stored ones
            tenant.datastore.update_schema(mine, {"s": {"regex": "(b+)+a"}})
        assert [r["s"] for r in admin.datastore.find(mine)] == ["ab"]
    finally:
        admin.datastore.drop_collection(mine)
