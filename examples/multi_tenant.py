"""One process, one Authenticator, three tenants' keys with different scopes and field rules.

Run against any ekoDB-compatible service (the reference server prints these variables):

    EKODB_URL=... EKODB_API_KEY=<admin key> EKODB_CA_BUNDLE=... python -m examples.multi_tenant

The admin key sets up collections and mints three scoped keys; from then on every call runs
as one tenant through ``Authenticator(client).using_credentials(key)``, all over the
client's single connection pool. Each step prints what the tenant was allowed to do.
"""

from __future__ import annotations

import uuid

from ekoclient import Authenticator, Client, where
from ekoclient.errors import NotFoundError, PermissionDeniedError


def main() -> None:
    run = uuid.uuid4().hex[:6]
    orders, staff, team_x = f"orders_{run}", f"staff_{run}", f"team_a_{run}"
    with Client.from_env() as client:  # the admin key: only used for set-up
        for name in (orders, staff, team_x):
            client.datastore.create_collection(name)
        client.datastore.insert(staff, {"name": "Ada", "salary": 120_000,
                                        "address": {"city": "Leeds", "street": "1 Long Row"}})

        # Three tenants, three scopes.
        sales = client.admin.create_key(
            f"sales-{run}", collection_permissions={orders: ["read", "write"]})
        hr = client.admin.create_key(
            f"hr-viewer-{run}", read_only=True,
            collection_permissions={staff: {"read": True,
                                            "exclude_fields": ["salary", "address.street"]}})
        team = client.admin.create_key(
            f"team-a-{run}", collection_permissions={
                "team_a_*": {"read": True, "write": True, "writable_fields": ["title", "done"]}})

        auth = Authenticator(client)
        as_sales = auth.using_credentials(sales.api_key)
        as_hr = auth.using_credentials(hr.api_key)
        as_team = auth.using_credentials(team.api_key)

        order = as_sales.datastore.insert(orders, {"item": "lamp", "qty": 2})
        print(f"sales   inserted order {order['id'][:8]}… and reads back "
              f"{as_sales.datastore.get(orders, order['id'])['item']!r}")
        try:
            as_sales.datastore.find(staff)
        except PermissionDeniedError as exc:
            print(f"sales   reading {staff}: refused ({exc.status} {exc.code})")

        people = as_hr.datastore.find(staff, where("name").eq("Ada"))
        print(f"hr      sees {people[0]} (salary and street are never sent)")
        try:
            as_hr.datastore.update(staff, people[0]["id"], {"name": "Eve"})
        except PermissionDeniedError as exc:
            print(f"hr      updating a record: refused, read-only key ({exc.status})")
        try:
            as_hr.datastore.get(orders, order["id"])
        except (PermissionDeniedError, NotFoundError) as exc:
            print(f"hr      fetching the sales order by id: refused ({exc.status})")

        task = as_team.datastore.insert(team_x, {"title": "ship it", "done": False})
        as_team.datastore.update(team_x, task["id"], {"done": True})
        print(f"team-a  matches pattern team_a_*: task is done = "
              f"{as_team.datastore.get(team_x, task['id'])['done']}")
        try:
            as_team.datastore.update(team_x, task["id"], {"owner": "mallory"})
        except PermissionDeniedError as exc:
            print(f"team-a  writing a field outside writable_fields: refused ({exc.status})")

        print(f"one pool, {client.token_cache_size} cached tokens "
              "(admin + three tenants, each exchanged once)")

        for key in (sales, hr, team):
            client.admin.delete_key(key.key_id)
        for name in (orders, staff, team_x):
            client.datastore.drop_collection(name)


if __name__ == "__main__":
    main()
