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


_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")

_EPILOG = """\
connection (environment):
  EKODB_URL        the service, e.g. https://127.0.0.1:8443
  EKODB_API_KEY    an admin key (keys ...), or any key (whoami, health)
  EKODB_CA_BUNDLE  the CA certificate that signed the server's (self-hosted servers)

examples:
  ekoclient keys create billing-reader --read-only on \\
      --permissions '{"invoices": ["read"]}' --allowed-ip 10.0.0.0/8 --rate-limit 600
  ekoclient keys list | jq '.[] | {key_id, label, read_only}'
  ekoclient keys update KEY_ID --read-only off --rate-limit tier
  ekoclient keys rotate KEY_ID        # prints the new secret once; the old one stops now
  ekoclient keys delete KEY_ID        # revoked at once, on every server node

Output is JSON on stdout; errors go to stderr with exit status 1 (2 for bad usage).
A key's secret is printed only by "keys create" and "keys rotate", and never again.
"""


def _switch(value: str) -> bool:
    """on/off, true/false, yes/no, 1/0: anything else is a usage error, never False."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected on or off (or true/false, yes/no, 1/0), "
                                     f"got {value!r}")


def _rate(value: str) -> int | str:
    if value.strip().lower() == "tier":
        return "tier"
    try:
        rate = int(value)
    except ValueError:
        rate = 0
    if rate < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of requests per "
                                         f"window, or 'tier', got {value!r}")
    return rate


def _permissions(value: str) -> dict[str, list[str]]:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); expected e.g. "
                                         """'{"orders": ["read", "write"]}'""") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object of collection -> levels")
    return parsed


def _scope_options(cmd: argparse.ArgumentParser, *, creating: bool) -> None:
    """The options create and update share (update changes only what is given)."""
    cmd.add_argument("--description", help="free text shown by keys list")
    cmd.add_argument(
        "--read-only", type=_switch, nargs="?" if creating else None,
        const=True if creating else None, default=False if creating else None,
        metavar="on|off",
        help="on: the key may read but never write, whatever its permissions say"
        + (" (a bare --read-only means on)" if creating else ""))
    cmd.add_argument(
        "--permissions", type=_permissions, metavar="JSON",
        help='collection (or "prefix*") -> levels among read, write, admin; e.g. '
        '\'{"orders": ["read", "write"], "team_a_*": ["read"]}\''
        + ("" if creating else "; replaces the key's current permissions"))
    cmd.add_argument("--allowed-ip", action="append", dest="allowed_ips", metavar="CIDR",
                     help="only from these addresses (IPv4/IPv6 CIDR; repeat for more)"
                     + ("" if creating else "; replaces the current list"))
    cmd.add_argument("--tier", help="rate-limit tier (free, developer, startup, business, "
                     "professional, enterprise_basic, enterprise_standard)")
    cmd.add_argument("--rate-limit", type=_rate, metavar="N" if creating else "N|tier",
                     help="this key's own limit, requests per the server's window (a minute "
                     "by default), instead of its tier's"
                     + ("" if creating else "; 'tier' goes back to the tier's limit"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekoclient",
        description="Manage API keys and inspect an ekoDB-compatible service.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("health", help="the service's health and version")
    sub.add_parser("whoami", help="the calling key's own permissions")
    audit = sub.add_parser("audit", help="recent audit records (admin)")
    audit.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    audit.add_argument("--key-id", help="only what this key did")
    audit.add_argument("--operation", help="only this operation, e.g. key.created")
    keys = sub.add_parser("keys", help="create, list, update, rotate and delete API keys",
                          description="API keys (needs an admin key in EKODB_API_KEY).",
                          epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    ksub.add_parser("list", help="every key, without secrets")
    create = ksub.add_parser("create", help="create a key; its secret is printed once",
                             description="Create a key. Without --permissions or --admin it "
                             "may do nothing; its secret (api_key) is printed once.")
    create.add_argument("label", help="a name for people, e.g. billing-reader")
    create.add_argument("--admin", action="store_true",
                        help="an admin key: every collection, every key (use sparingly)")
    _scope_options(create, creating=True)
    update = ksub.add_parser("update", help="change a key's scope or settings",
                             description="Change a key; options not given stay as they are.")
    update.add_argument("key_id", help="the key's id (keys list), not its secret")
    update.add_argument("--label")
    _scope_options(update, creating=False)
    for name, text in (("rotate", "new secret, same id and scope; printed once"),
                       ("delete", "revoke a key at once")):
        ksub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".") \
            .add_argument("key_id", help="the key's id (keys list), not its secret")
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
                               allowed_ips=args.allowed_ips, tier=args.tier,
                               rate_limit=args.rate_limit)
        return {**new.model_dump(mode="json"), "api_key": new.api_key}
    if args.action == "update":
        return admin.update_key(args.key_id, label=args.label, description=args.description,
                                read_only=args.read_only,
                                collection_permissions=args.permissions,
                                allowed_ips=args.allowed_ips, tier=args.tier,
                                rate_limit=args.rate_limit)
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
