"""Delegated admins: which keys a scoped admin key may mint, see, revoke and rotate.

Framework-free. A *delegated admin* is a key that is not a full admin, not read-only, and
holds the admin level on at least one resource rule (``{"team_*": ["admin"]}``).

Decisions:

- **Bounds.** A key it mints never exceeds it: never ``is_admin``; permissions covered by its
  own (:meth:`Scope.covers`); ``allowed_ips`` inside its own; a tier no higher than its own;
  an effective rate limit (its ``rate_limit`` or its tier's) no higher than its own. Left
  out, allowlist, tier and rate limit are inherited (the rate limit only when the child's
  tier would allow more). :func:`exceeds` is the one check, used at minting and again
  whenever an admin changes a minter or a minted key (a change that would leave a child
  beyond its minter is refused, so the bound holds for the key's whole life).
- **Ownership.** It lists, revokes and rotates the keys minted under it (its children and
  theirs); any other key id answers 404, as if absent, so ids cannot be probed.
- **Revocation.** Deleting a minter deletes every key minted under it, in the same
  transaction (revoked, not merely disabled: nothing is left to re-enable by mistake).
  Keys minted by a full admin key belong to the server's admins and are not tied to it.
  Rotating a minter changes only its own secret.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mock_server.config import TIERS
from mock_server.errors import ApiError, forbidden
from mock_server.keys import IPNetwork, KeyRecord, normalize_network
from mock_server.permissions import PermissionSpecError, Scope

__all__ = ["Child", "LimitFor", "check_mint", "child_of", "exceeds", "is_delegated_admin"]

#: ``KeyRateLimits.limit_for``: a key's effective requests per window (None: unlimited).
LimitFor = Callable[..., int | None]


def is_delegated_admin(record: KeyRecord) -> bool:
    """A scoped key allowed to mint: admin level on some rule, not read-only."""
    if record.is_admin or record.read_only:
        return False
    return any(rule.admin for rule in record.scope().rules.values())


@dataclass
class Child:
    """What a minted key would hold (the fields a minter is bounded on)."""

    is_admin: bool
    read_only: bool
    collection_permissions: dict[str, object] | None
    allowed_ips: list[str] | None
    tier: str | None
    rate_limit: int | None


def _networks(cidrs: Sequence[str]) -> list[IPNetwork]:
    out = []
    for text in cidrs:
        try:
            out.append(normalize_network(text))
        except ValueError:
            raise ApiError(400, "validation_error",
                           f"allowed_ips: {text[:64]!r} is not a CIDR") from None
    return out


def exceeds(minter: KeyRecord, child: Child, limit_for: LimitFor) -> str | None:
    """Why ``child`` would hold more than ``minter`` may give, or None (within bounds).

    ``child`` must have its inherited fields filled in (see :func:`check_mint`).
    """
    if child.is_admin:
        return "a delegated admin cannot create or keep an is_admin key"
    try:
        wanted = Scope.from_raw(child.collection_permissions or {}, is_admin=False,
                                read_only=child.read_only)
    except PermissionSpecError as exc:
        raise ApiError(400, "validation_error", f"collection_permissions: {exc}") from None
    if not minter.scope().covers(wanted):
        return "a minted key cannot have more permissions than its minter"
    own = minter.networks
    if own:
        nets = _networks(child.allowed_ips or [])
        if not nets or not all(
            any(n.version == o.version and n.subnet_of(o) for o in own)  # type: ignore[arg-type]
            for n in nets
        ):
            return "a minted key's allowed_ips must lie within its minter's allowed_ips"
    if child.tier in TIERS and minter.tier in TIERS and (
            TIERS.index(child.tier) > TIERS.index(minter.tier)):
        return "a minted key cannot have a higher tier than its minter"
    mine = limit_for(tier=minter.tier, is_admin=False, override=minter.rate_limit)
    theirs = limit_for(tier=child.tier or minter.tier, is_admin=False,
                       override=child.rate_limit)
    if mine is not None and (theirs is None or theirs > mine):
        return "a minted key cannot have a higher rate limit than its minter"
    return None


def check_mint(minter: KeyRecord, child: Child, limit_for: LimitFor) -> Child:
    """The child to create (inherited fields filled in), or 403 saying what is too much."""
    if minter.is_admin:
        return child
    if not is_delegated_admin(minter):
        raise forbidden("admin level required to create keys")
    if child.tier is not None and child.tier not in TIERS:
        raise ApiError(400, "validation_error", "tier must be one of " + ", ".join(TIERS))
    if child.allowed_ips is None or not child.allowed_ips:
        child.allowed_ips = list(minter.allowed_ips) or child.allowed_ips
    if child.tier is None:
        child.tier = minter.tier
    if child.rate_limit is None:
        mine = limit_for(tier=minter.tier, is_admin=False, override=minter.rate_limit)
        theirs = limit_for(tier=child.tier, is_admin=False, override=None)
        if mine is not None and (theirs is None or theirs > mine):
            child.rate_limit = mine
    reason = exceeds(minter, child, limit_for)
    if reason is not None:
        raise forbidden(reason)
    return child


def child_of(record: KeyRecord) -> Child:
    """A stored key as the bounds see it."""
    return Child(is_admin=record.is_admin, read_only=record.read_only,
                 collection_permissions=dict(record.collection_permissions),
                 allowed_ips=list(record.allowed_ips), tier=record.tier,
                 rate_limit=record.rate_limit)
