"""``ekoclient``: the security admin's command line (SPEC §2), over the same SDK calls.

Connection settings come from ``EKODB_URL``, ``EKODB_API_KEY`` and ``EKODB_CA_BUNDLE``.
Output is JSON, one document per command, so it pipes into ``jq``; a new key's secret is
printed once, by ``keys create`` and ``keys rotate``, and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from ._client import Client
from .errors import EkoError


def _dump(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return json.dumps(value, indent=2, sort_keys=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekoclient",
        description="Manage keys and inspect an ekoDB-compatible service. Connection "
        "settings come from EKODB_URL, EKODB_API_KEY and EKODB_CA_BUNDLE.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health", help="the service's health and version")
    sub.add_parser("whoami", help="the calling key's own permissions")
    audit = sub.add_parser("audit", help="recent audit records")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--key-id")
    audit.add_argument("--operation")
    keys = sub.add_parser("keys", help="create, list, rotate, update and delete API keys")
    ksub = keys.add_subparsers(dest="action", required=True)
    ksub.add_parser("list", help="every key, without secrets")
    create = ksub.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("label")
    create.add_argument("--description")
    create.add_argument("--admin", action="store_true", help="an admin key (everything)")
    create.add_argument("--read-only", action="store_true")
    create.add_argument("--permissions", type=json.loads, metavar="JSON",
                        help='e.g. \'{"orders": ["read", "write"], "team_a_*": ["read"]}\'')
    create.add_argument("--allowed-ip", action="append", dest="allowed_ips", metavar="CIDR")
    create.add_argument("--tier")
    update = ksub.add_parser("update", help="change a key's scope or settings")
    update.add_argument("key_id")
    update.add_argument("--label")
    update.add_argument("--description")
    update.add_argument("--read-only", type=lambda s: s.lower() in ("1", "true", "yes"))
    update.add_argument("--permissions", type=json.loads, metavar="JSON")
    update.add_argument("--allowed-ip", action="append", dest="allowed_ips", metavar="CIDR")
    update.add_argument("--tier")
    for name, text in (("rotate", "new secret, same id; printed once"),
                       ("delete", "revoke a key at once")):
        ksub.add_parser(name, help=text).add_argument("key_id")
    return parser


def run(args: argparse.Namespace, client: Client) -> Any:
    admin = client.admin
    if args.command == "health":
        return admin.health()
    if args.command == "whoami":
        return admin.permissions()
    if args.command == "audit":
        return admin.audit_log(limit=args.limit, key_id=args.key_id, operation=args.operation)
    if args.action == "list":
        return admin.list_keys()
    if args.action == "create":
        new = admin.create_key(args.label, description=args.description, is_admin=args.admin,
                               read_only=args.read_only,
                               collection_permissions=args.permissions,
                               allowed_ips=args.allowed_ips, tier=args.tier)
        return {**new.model_dump(mode="json"), "api_key": new.api_key}
    if args.action == "update":
        return admin.update_key(args.key_id, label=args.label, description=args.description,
                                read_only=args.read_only,
                                collection_permissions=args.permissions,
                                allowed_ips=args.allowed_ips, tier=args.tier)
    if args.action == "rotate":
        new = admin.rotate_key(args.key_id)
        return {**new.model_dump(mode="json"), "api_key": new.api_key}
    admin.delete_key(args.key_id)
    return {"deleted": args.key_id}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Client.from_env() as client:
            print(_dump(run(args, client)))
    except EkoError as exc:
        print(f"ekoclient: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
