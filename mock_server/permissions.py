"""Pure permission engine for the reference server (SPEC §4.1).

No I/O and no web framework: routes turn a key row into a :class:`Scope` with
:meth:`Scope.from_raw` and ask it questions. Keeping the rules here, side-effect free,
lets them be tested exhaustively with property tests instead of through HTTP.

Semantics in brief:

* A permissions document maps a resource name or ``*`` pattern to levels. ``*`` matches
  any run of characters except ``:``, so a pattern never leaks into another service's
  namespace (``blob:*`` is every blob table, ``*`` is every DataStore collection).
* The single most specific matching rule decides (exact name, then most literal
  characters, then the lexicographically smallest pattern); rules are never unioned, so a
  narrower rule can take rights away.
* ``admin`` implies ``read`` and ``write``; ``write`` does not imply ``read``.
* Field rules use dotted paths into nested objects; ``id`` is always readable, and ``id``
  plus top-level ``_``-prefixed fields are never writable.
* Arrays are transparent to paths: ``items.secret`` names ``secret`` in every object of the
  array ``items`` (and of arrays nested in it). :func:`project_record` is the one projection
  every channel uses (get, find, batch answers, DataBus poll, WebSocket push); like MongoDB,
  selecting inside an array keeps only its object (and array) elements.
* Writing inside an array (a rule ``writable_fields: ["items.qty"]``) replaces the array, so a
  write of ``items`` is judged by what changes against the stored value: only writable paths
  may differ, and the key must be able to read all of ``items`` (else the verdict would tell
  it about values it cannot see).
* Deleting a record needs write on every field: the admin level, or write through a rule
  without field restrictions (:meth:`Scope.may_delete`, used by every delete path).
* Queue-like services (Queue, DedupQueue, DataBus) share one table of operation levels,
  :data:`QUEUE_OPERATIONS`: looking is READ, consuming or changing is WRITE.
"""

from __future__ import annotations

import copy
import enum
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "MAX_FIELDS",
    "MAX_RULES",
    "PREFIXES",
    "QUEUE_OPERATIONS",
    "Level",
    "PermissionDenied",
    "PermissionSpecError",
    "Rule",
    "Scope",
    "parse_permissions",
    "pattern_contains",
    "pattern_matches",
    "project_record",
    "validate_resource_name",
]

MAX_RULES = 256
MAX_FIELDS = 256
MAX_NAME_LENGTH = 128
MAX_PATH_LENGTH = 256
PREFIXES = ("blob:", "queue:", "dedupq:", "bus:", "kv:")

_NAME_BODY = re.compile(r"[A-Za-z0-9_.\-]+")
_PATTERN_BODY = re.compile(r"[A-Za-z0-9_.\-*]+")
_FIELD_PATH = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_RULE_KEYS = ("read", "write", "admin", "select_fields", "exclude_fields", "writable_fields")


class Level(enum.Enum):
    """Access level a rule may grant on a resource."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


#: The level each operation of a queue-like service needs on its resource
#: (``queue:<q>``, ``dedupq:<q>``, ``bus:<subscription>``). Looking never changes what
#: another consumer gets; anything that claims, removes, releases or adds messages does.
QUEUE_OPERATIONS: Mapping[str, Level] = MappingProxyType({
    "peek": Level.READ,
    "size": Level.READ,
    "claim_count": Level.READ,
    "get_subscription": Level.READ,
    "send": Level.WRITE,
    "send_batch": Level.WRITE,
    "poll": Level.WRITE,
    "ack": Level.WRITE,
    "renew": Level.WRITE,
    "unclaim_all": Level.WRITE,
    "move": Level.WRITE,
    "purge": Level.WRITE,
    "subscribe": Level.WRITE,
    "unsubscribe": Level.WRITE,
})


class PermissionSpecError(ValueError):
    """An invalid permissions document; the message is shown to the user (400)."""


class PermissionDenied(ValueError):
    """An operation the scope does not allow; names resource/level/field, never values (403)."""


def _show(text: str, limit: int = 64) -> str:
    """Quote user input for an error message without letting it grow unbounded."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------- names


def validate_resource_name(name: object, *, allow_wildcards: bool = False) -> str:
    """Check a resource name (or pattern) and return it; raise PermissionSpecError if bad.

    Exposed so the server can validate collection/table/queue names with the same rules
    the permission documents use.
    """
    if not isinstance(name, str):
        raise PermissionSpecError(f"resource name must be a string, got {type(name).__name__}")
    prefix, body = "", name
    if ":" in name:
        prefix = name[: name.index(":") + 1]
        body = name[len(prefix) :]
        if prefix not in PREFIXES:
            raise PermissionSpecError(
                f"resource {_show(name)}: unknown prefix {_show(prefix)}; "
                f"expected a bare collection name or one of {', '.join(PREFIXES)}"
            )
    if not 1 <= len(body) <= MAX_NAME_LENGTH:
        raise PermissionSpecError(
            f"resource {_show(name)}: name after the prefix must be 1-{MAX_NAME_LENGTH} "
            f"characters, got {len(body)}"
        )
    allowed = _PATTERN_BODY if allow_wildcards else _NAME_BODY
    if not allowed.fullmatch(body):
        extra = ", '*'" if allow_wildcards else ""
        raise PermissionSpecError(
            f"resource {_show(name)}: name may only contain letters, digits, '_', '.', '-'{extra}"
        )
    return name


@functools.lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a ``*`` pattern; ``*`` is ``[^:]*`` so it never crosses a service prefix."""
    return re.compile("[^:]*".join(re.escape(part) for part in pattern.split("*")))


def pattern_matches(pattern: str, name: str) -> bool:
    """True if the resource ``name`` matches ``pattern``."""
    return _pattern_regex(pattern).fullmatch(name) is not None


def pattern_contains(outer: str, inner: str) -> bool:
    """True if every name matching ``inner`` also matches ``outer`` (sound, not complete).

    We match ``outer`` against the literal text of ``inner``, letting ``outer``'s ``*``
    swallow ``inner``'s ``*`` characters. Sound: any name matching ``inner`` is ``inner``
    with each ``*`` replaced by a ``:``-free string; doing the same replacement inside the
    substrings ``outer``'s stars matched gives ``:``-free substrings again, so the name
    matches ``outer``. If the test is ever incomplete for a contrived pair, that only
    makes :meth:`Scope.covers` stricter, never looser.
    """
    return pattern_matches(outer, inner)


def _patterns_intersect(p: str, q: str) -> bool:
    """True if some name matches both patterns (exact, by a walk over the product automaton)."""
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(p) and j == len(q):
            return True
        nxt: list[tuple[int, int]] = []
        if i < len(p) and p[i] == "*":
            nxt.append((i + 1, j))  # p's star matches nothing more
            if j < len(q) and q[j] not in "*:":
                nxt.append((i, j + 1))  # p's star eats q's literal
        if j < len(q) and q[j] == "*":
            nxt.append((i, j + 1))
            if i < len(p) and p[i] not in "*:":
                nxt.append((i + 1, j))
        if i < len(p) and j < len(q) and p[i] == q[j] and p[i] != "*":
            nxt.append((i + 1, j + 1))
        todo.extend(nxt)
    return False


def _specificity(pattern: str) -> tuple[int, int, str]:
    """Sort key: smaller is more specific (exact name, more literals, then lexicographic)."""
    is_pattern = 1 if "*" in pattern else 0
    return (is_pattern, -(len(pattern) - pattern.count("*")), pattern)


# --------------------------------------------------------------------------- field paths


def _segments(path: str) -> list[str] | None:
    """Split a dotted path; None if it has an empty segment (ambiguous, never allowed)."""
    parts = path.split(".")
    return None if any(not part for part in parts) else parts


def _at_or_below(path: str, base: str) -> bool:
    """True if ``path`` equals ``base`` or is nested inside it."""
    return path == base or path.startswith(base + ".")


def _related(a: str, b: str) -> bool:
    """True if one path equals or contains the other."""
    return _at_or_below(a, b) or _at_or_below(b, a)


def _is_system(path: str) -> bool:
    """``id`` and top-level ``_`` fields belong to the server and are never client-writable."""
    top = path.split(".", 1)[0]
    return top == "id" or top.startswith("_")


def _parse_fields(resource: str, key: str, value: object) -> tuple[str, ...]:
    """Validate a list of field paths and return it sorted and de-duplicated (canonical)."""
    where = f"resource {_show(resource)}: {key}"
    if not isinstance(value, (list, tuple)):
        raise PermissionSpecError(f"{where} must be a list of field paths")
    if len(value) > MAX_FIELDS:
        raise PermissionSpecError(f"{where} has {len(value)} entries, at most {MAX_FIELDS}")
    for path in value:
        if not isinstance(path, str):
            raise PermissionSpecError(f"{where} entries must be strings")
        if len(path) > MAX_PATH_LENGTH or not _FIELD_PATH.fullmatch(path):
            raise PermissionSpecError(
                f"{where} entry {_show(path)} is not a dotted field path of letters, digits, "
                f"'_' or '-' (no empty segments, at most {MAX_PATH_LENGTH} characters)"
            )
        if key == "exclude_fields" and path.split(".", 1)[0] == "id":
            raise PermissionSpecError(f"{where}: 'id' is always readable and cannot be excluded")
        if key == "writable_fields" and _is_system(path):
            raise PermissionSpecError(
                f"{where}: {_show(path)} is a system field ('id' or starting with '_') "
                "and is never writable"
            )
    return tuple(sorted(set(value)))


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """What one permissions entry grants; built by :func:`parse_permissions` (validated)."""

    read: bool = False
    write: bool = False
    admin: bool = False
    select_fields: tuple[str, ...] | None = None
    exclude_fields: tuple[str, ...] = ()
    writable_fields: tuple[str, ...] | None = None

    def grants(self, level: Level) -> bool:
        """Level check with admin implying read and write (write does not imply read)."""
        if level is Level.READ:
            return self.read or self.admin
        if level is Level.WRITE:
            return self.write or self.admin
        return self.admin

    def levels(self) -> frozenset[Level]:
        """Every level this rule grants, implications included."""
        return frozenset(level for level in Level if self.grants(level))

    def path_readable(self, path: str) -> bool:
        """Field rules only (no level check): may this dotted path be read or filtered on?

        An ancestor of an excluded or partly selected path is not readable, because
        filtering on the whole object would reveal what is hidden inside it.
        """
        if path == "id":
            return True
        if _segments(path) is None:
            return False
        if any(_related(path, excluded) for excluded in self.exclude_fields):
            return False
        if self.select_fields is None:
            return True
        return any(_at_or_below(path, selected) for selected in self.select_fields)

    def path_writable(self, path: str) -> bool:
        """Field rules only: writable_fields if given, else whatever is readable."""
        if _is_system(path) or _segments(path) is None:
            return False
        if self.writable_fields is None:
            return self.path_readable(path)
        return any(_at_or_below(path, allowed) for allowed in self.writable_fields)

    def to_raw(self) -> dict[str, Any]:
        """Canonical object form; only non-default keys are emitted."""
        raw: dict[str, Any] = {}
        for key in ("read", "write", "admin"):
            if getattr(self, key):
                raw[key] = True
        if self.select_fields is not None:
            raw["select_fields"] = list(self.select_fields)
        if self.exclude_fields:
            raw["exclude_fields"] = list(self.exclude_fields)
        if self.writable_fields is not None:
            raw["writable_fields"] = list(self.writable_fields)
        return raw

    def dominates(self, other: Rule, other_levels: frozenset[Level]) -> bool:
        """May a key holding ``self`` hand out ``other`` (granting ``other_levels``)?

        Requires ADMIN here, and that what ``other`` can see (records, and paths it can
        filter on) and write is a subset of what ``self`` can. The checks are sufficient
        conditions, kept simple: they may refuse an exotic but harmless combination.
        """
        if not self.admin or not other_levels <= self.levels():
            return False
        if self.select_fields is not None and (
            other.select_fields is None
            or not all(
                any(_at_or_below(path, mine) for mine in self.select_fields)
                for path in other.select_fields
            )
        ):
            return False
        for excluded in self.exclude_fields:
            hidden_by_exclude = any(_at_or_below(excluded, e) for e in other.exclude_fields)
            hidden_by_select = other.select_fields is not None and not any(
                _related(path, excluded) for path in other.select_fields
            )
            if not (hidden_by_exclude or hidden_by_select):
                return False
        if Level.WRITE not in other_levels:
            return True
        if self.writable_fields is None:
            # Our writable set is our readable set; the readable checks above cover
            # other.writable_fields is None, explicit paths must each be readable here.
            return other.writable_fields is None or all(
                self.path_readable(path) for path in other.writable_fields
            )
        their_writable = (
            other.writable_fields if other.writable_fields is not None else other.select_fields
        )
        if their_writable is None:
            return False
        return all(
            any(_at_or_below(path, mine) for mine in self.writable_fields)
            for path in their_writable
        )


def _parse_rule(resource: str, value: object) -> Rule:
    """Turn one document entry (list of levels or object) into a Rule."""
    where = f"resource {_show(resource)}"
    valid_levels = ", ".join(repr(level.value) for level in Level)
    if isinstance(value, (list, tuple)):
        levels: set[str] = set()
        for item in value:
            if not isinstance(item, str) or item not in {level.value for level in Level}:
                shown = _show(item) if isinstance(item, str) else type(item).__name__
                raise PermissionSpecError(
                    f"{where}: unknown level {shown}; expected {valid_levels}"
                )
            levels.add(item)
        return Rule(read="read" in levels, write="write" in levels, admin="admin" in levels)
    if not isinstance(value, Mapping):
        raise PermissionSpecError(
            f"{where}: expected a list of levels or an object, got {type(value).__name__}"
        )
    for key in value:
        if key not in _RULE_KEYS:
            shown = _show(key) if isinstance(key, str) else type(key).__name__
            raise PermissionSpecError(
                f"{where}: unknown key {shown}; allowed keys are {', '.join(_RULE_KEYS)}"
            )
    flags: dict[str, bool] = {}
    for key in ("read", "write", "admin"):
        flag = value.get(key, False)
        if not isinstance(flag, bool):
            raise PermissionSpecError(f"{where}: {key} must be true or false")
        flags[key] = flag
    fields: dict[str, tuple[str, ...] | None] = {}
    for key in ("select_fields", "exclude_fields", "writable_fields"):
        given = value.get(key)
        fields[key] = None if given is None else _parse_fields(resource, key, given)
    return Rule(
        read=flags["read"],
        write=flags["write"],
        admin=flags["admin"],
        select_fields=fields["select_fields"],
        exclude_fields=fields["exclude_fields"] or (),
        writable_fields=fields["writable_fields"],
    )


def parse_permissions(raw: object) -> dict[str, Rule]:
    """Validate a permissions document; return rules keyed by pattern, sorted by pattern.

    ``None`` means "no rules" (the SDK sends ``collection_permissions=None`` by default).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PermissionSpecError(
            f"permissions must be an object mapping resource names to levels, "
            f"got {type(raw).__name__}"
        )
    if len(raw) > MAX_RULES:
        raise PermissionSpecError(f"permissions has {len(raw)} rules, at most {MAX_RULES}")
    rules: dict[str, Rule] = {}
    for name in sorted(raw, key=str):
        pattern = validate_resource_name(name, allow_wildcards=True)
        rules[pattern] = _parse_rule(pattern, raw[name])
    return rules


# --------------------------------------------------------------------------- scope


def _touched_value(value: object, path: str, paths: set[str], ambiguous: set[str]) -> None:
    """Paths that writing ``value`` at ``path`` creates: leaves of objects, through arrays.

    A non-empty object touches its members (the store deep-merges objects), an array the
    touched paths of its elements (arrays are transparent to paths); anything else, an empty
    object or an empty array touches ``path`` itself.
    """
    if isinstance(value, Mapping) and value:
        _touched_paths(value, path + ".", paths, ambiguous)
    elif isinstance(value, list) and value:
        for item in value:
            _touched_value(item, path, paths, ambiguous)
    else:
        paths.add(path)


def _touched_paths(
    changes: Mapping[Any, Any], prefix: str, paths: set[str], ambiguous: set[str],
    skip: frozenset[str] = frozenset(),
) -> None:
    """Collect the dotted paths a write body touches (leaves of nested objects and arrays).

    Keys that are not strings, are empty or contain '.' go to ``ambiguous``: they would make
    dotted paths ambiguous, so no key may write them. Values at ``skip`` paths are judged
    elsewhere (by a diff); only their ambiguous keys are collected.
    """
    for key, value in changes.items():
        path = prefix + (key if isinstance(key, str) else str(key))
        if not isinstance(key, str) or not key or "." in key:
            ambiguous.add(path)
        elif path in skip:
            _touched_value(value, path, set(), ambiguous)
        elif isinstance(value, Mapping) and value:
            _touched_paths(value, path + ".", paths, ambiguous, skip)
        else:
            _touched_value(value, path, paths, ambiguous)


def _replaced_arrays(
    current: Mapping[str, Any], changes: Mapping[str, Any], prefix: str = ""
) -> Iterator[tuple[str, Any, list[Any]]]:
    """(path, stored value, new array) for each array a deep-merge write puts over a value."""
    for key, value in changes.items():
        if not isinstance(key, str) or key not in current:
            continue
        old = current[key]
        if isinstance(value, list):
            yield prefix + key, old, value
        elif isinstance(value, Mapping) and value and isinstance(old, Mapping):
            yield from _replaced_arrays(old, value, f"{prefix}{key}.")


def _diff_paths(old: object, new: object, path: str) -> set[str]:
    """Dotted paths where ``new`` differs from ``old`` (array positions are transparent).

    Arrays of the same length compare element by element; anything else that differs
    (another length, another type, another scalar) is a change of ``path`` itself.
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: set[str] = set()
        for key in old.keys() | new.keys():
            sub = f"{path}.{key}"
            if key not in old:
                _touched_value(new[key], sub, out, out)
            elif key not in new:
                out.add(sub)
            else:
                out |= _diff_paths(old[key], new[key], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = set()
        for before, after in zip(old, new, strict=True):
            out |= _diff_paths(before, after, path)
        return out
    if type(old) is type(new) and old == new:  # type first: JSON true is not 1
        return set()
    return {path}


# A field-rule tree: segment -> subtree, or None for "the whole value from here down".
_Tree = dict[str, "_Tree | None"]


@functools.lru_cache(maxsize=4096)
def _tree(paths: tuple[str, ...]) -> _Tree:
    """Nested segments of dotted paths; a path also listed with a descendant wins whole."""
    root: _Tree = {}
    for path in sorted(paths, key=lambda p: p.count(".")):
        node = root
        parts = path.split(".")
        for i, part in enumerate(parts):
            if part in node and node[part] is None:
                break  # an ancestor is already whole
            if i == len(parts) - 1:
                node[part] = None
            else:
                child = node.get(part)
                if child is None:
                    child = {}
                    node[part] = child
                node = child
    return root


_MISSING: Any = object()


def _select(value: Any, tree: _Tree) -> Any:
    """The parts of ``value`` named by ``tree``; arrays keep their projected containers."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in tree.items():
            if key not in value:
                continue
            if sub is None:
                out[key] = copy.deepcopy(value[key])
                continue
            picked = _select(value[key], sub)
            if picked is not _MISSING:
                out[key] = picked
        return out
    if isinstance(value, list):
        items = (_select(item, tree) for item in value if isinstance(item, (Mapping, list)))
        return [item for item in items if item is not _MISSING]
    return _MISSING  # a scalar where the path goes deeper holds nothing selected


def _exclude(value: Any, tree: _Tree) -> None:
    """Remove (in place) what ``tree`` names, in objects and in every element of arrays."""
    if isinstance(value, dict):
        for key, sub in tree.items():
            if key not in value:
                continue
            if sub is None:
                del value[key]
            else:
                _exclude(value[key], sub)
    elif isinstance(value, list):
        for item in value:
            _exclude(item, tree)


def project_record(
    record: Mapping[str, Any],
    select_fields: Iterable[str] | None = None,
    exclude_fields: Iterable[str] = (),
) -> dict[str, Any]:
    """A deep copy of ``record`` with only ``select_fields`` (all if None), minus
    ``exclude_fields``; ``id`` is always kept. Paths reach into arrays of objects.

    The one projection of the server: key rules (:meth:`Scope.project`) and a request's own
    select/exclude both go through it, on every channel a record leaves by.
    """
    if select_fields is None:
        result = copy.deepcopy(dict(record))
    else:
        result = _select(record, _tree(tuple(sorted(set(select_fields)))))
    if "id" in record:
        result["id"] = copy.deepcopy(record["id"])
    excluded = tuple(sorted({p for p in exclude_fields if p != "id"}))
    if excluded:
        _exclude(result, _tree(excluded))
    return result


@dataclass(frozen=True)
class Scope:
    """Everything one API key may do; immutable, built per request from the key row."""

    is_admin: bool
    read_only: bool
    rules: Mapping[str, Rule]

    def __post_init__(self) -> None:
        # An admin key that is also read-only has no clear meaning (and could mint
        # writable keys through covers()); refuse it rather than guess.
        if self.is_admin and self.read_only:
            raise PermissionSpecError("a key cannot be both is_admin and read_only")

    @classmethod
    def from_raw(cls, raw_permissions: object, *, is_admin: bool, read_only: bool) -> Scope:
        """Build a scope from a stored/submitted permissions document (validated)."""
        for name, flag in (("is_admin", is_admin), ("read_only", read_only)):
            if not isinstance(flag, bool):
                raise PermissionSpecError(f"{name} must be true or false")
        return cls(is_admin=is_admin, read_only=read_only, rules=parse_permissions(raw_permissions))

    def to_raw(self) -> dict[str, Any]:
        """Canonical JSON permissions (the flags travel separately, as in the key row)."""
        return {pattern: self.rules[pattern].to_raw() for pattern in sorted(self.rules)}

    def rule_for(self, resource: str) -> Rule | None:
        """The single most specific rule matching ``resource`` (admin keys ignore rules)."""
        matching = [pattern for pattern in self.rules if pattern_matches(pattern, resource)]
        if not matching:
            return None
        return self.rules[min(matching, key=_specificity)]

    def allows(self, resource: str, level: Level) -> bool:
        """Level check for one resource."""
        if self.is_admin:
            return True
        if self.read_only and level is not Level.READ:
            return False
        rule = self.rule_for(resource)
        return rule is not None and rule.grants(level)

    def require(self, resource: str, level: Level) -> None:
        """Raise PermissionDenied unless ``allows``."""
        if not self.allows(resource, level):
            raise PermissionDenied(f"this API key may not {level.value} {_show(resource, 200)}")

    def project(self, resource: str, record: Mapping[str, Any], *,
                owned: bool = False) -> dict[str, Any]:
        """A deep copy of ``record`` holding only what may be read (``id`` always kept).

        ``owned``: the caller made ``record`` for this answer alone (just decrypted), so
        when nothing is hidden it is returned as is instead of copied.
        Raises PermissionDenied without READ, so a forgotten ``require`` cannot leak.
        """
        self.require(resource, Level.READ)
        rule = None if self.is_admin else self.rule_for(resource)
        if rule is None:
            return dict(record) if owned else copy.deepcopy(dict(record))
        return project_record(record, rule.select_fields, rule.exclude_fields)

    def readable(self, resource: str, path: str) -> bool:
        """May this key filter or sort on ``path``? (False without READ.)"""
        if not self.allows(resource, Level.READ):
            return False
        rule = None if self.is_admin else self.rule_for(resource)
        if rule is None:
            return _segments(path) is not None
        return rule.path_readable(path)

    def writable(self, resource: str, path: str) -> bool:
        """May a write set ``path``? (False without WRITE; system fields never.)"""
        if not self.allows(resource, Level.WRITE):
            return False
        rule = None if self.is_admin else self.rule_for(resource)
        if rule is None:
            return not _is_system(path) and _segments(path) is not None
        return rule.path_writable(path)

    def forbidden_writes(self, resource: str, changes: Mapping[str, Any],
                         current: Mapping[str, Any] | None = None) -> list[str]:
        """Sorted dotted paths of ``changes`` this key may not write; [] means allowed.

        Without WRITE on the resource every touched path is forbidden. With ``current`` (the
        stored record of an update), an array put over a stored value at a path that is not
        writable as a whole is judged by what it changes, not by what it mentions (a client
        must resend the members it may not change): every changed path must be writable,
        and the whole old value readable, so the verdict reveals nothing hidden. Without
        ``current`` such a write is judged by what it mentions, which is stricter.
        """
        replaced = list(_replaced_arrays(current, changes)) if current is not None else []
        paths: set[str] = set()
        ambiguous: set[str] = set()
        _touched_paths(changes, "", paths, ambiguous, frozenset(p for p, _, _ in replaced))
        bad = {path for path in paths if not self.writable(resource, path)}
        for path, old, new in replaced:
            if self.writable(resource, path):
                continue
            if not self.readable(resource, path):
                mentioned: set[str] = set()
                _touched_value(new, path, mentioned, set())
                bad |= {path} | {p for p in mentioned if not self.writable(resource, p)}
                continue
            bad |= {p for p in _diff_paths(old, new, path) if not self.writable(resource, p)}
        return sorted(bad | ambiguous)

    def require_writes(self, resource: str, changes: Mapping[str, Any],
                       current: Mapping[str, Any] | None = None) -> None:
        """Raise PermissionDenied naming the fields if any part of the write is forbidden."""
        self.require(resource, Level.WRITE)
        bad = self.forbidden_writes(resource, changes, current)
        if bad:
            shown = ", ".join(_show(path) for path in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise PermissionDenied(
                f"this API key may not write field(s) {shown}{more} of {_show(resource, 200)}"
            )

    def may_delete(self, resource: str) -> bool:
        """May this key delete records of ``resource``? Deleting writes every field away.

        So it needs the admin level there, or WRITE through a rule without field
        restrictions (no ``select_fields``, ``exclude_fields`` or ``writable_fields``): a
        key that may write only ``name``, or cannot see ``ssn``, may not destroy either.
        Decided from the rule alone, never from the record, so the answer reveals nothing.
        """
        if self.is_admin:
            return True
        if not self.allows(resource, Level.WRITE):
            return False
        rule = self.rule_for(resource)
        assert rule is not None  # allows() found one
        if rule.grants(Level.ADMIN):
            return True
        return (rule.select_fields is None and not rule.exclude_fields
                and rule.writable_fields is None)

    def require_delete(self, resource: str) -> None:
        """Raise PermissionDenied unless :meth:`may_delete` (every delete path calls this)."""
        if self.may_delete(resource):
            return
        if not self.allows(resource, Level.WRITE):
            self.require(resource, Level.WRITE)
        raise PermissionDenied(
            f"this API key may not delete records of {_show(resource, 200)}: deleting needs "
            "write on every field (a rule without select_fields, exclude_fields or "
            "writable_fields) or the admin level"
        )

    def require_operation(self, resource: str, operation: str) -> None:
        """Raise PermissionDenied unless the key has the level :data:`QUEUE_OPERATIONS`
        gives ``operation`` on ``resource``."""
        level = QUEUE_OPERATIONS[operation]
        if not self.allows(resource, level):
            raise PermissionDenied(
                f"this API key may not {operation.replace('_', ' ')} {_show(resource, 200)}: "
                f"that needs the {level.value} level"
            )

    def covers(self, other: Scope) -> bool:
        """May a key with this scope mint a key with ``other``? (Never grants more.)

        For every rule P of ``other`` that grants something: some rule of ours must contain
        P's pattern (so every resource P can win has a rule here), and every rule Q of ours
        that could be the winner where P is the winner must dominate P. The pair (P, Q) is
        impossible when the patterns are disjoint, when a more specific rule of ``other``
        contains Q, or when a more specific rule of ours contains P. Checking only "some
        containing rule is admin" (without the pairs) would be unsound: a narrower deny rule
        of ours would be bypassed.
        """
        if other.is_admin:
            return self.is_admin
        if self.is_admin:
            return True
        if self.read_only:
            return False
        for p, p_rule in other.rules.items():
            p_levels = p_rule.levels()
            if other.read_only:
                p_levels &= {Level.READ}
            if not p_levels:
                continue
            if not any(pattern_contains(q, p) for q in self.rules):
                return False
            for q, q_rule in self.rules.items():
                if not _patterns_intersect(p, q):
                    continue
                if any(
                    _specificity(p2) < _specificity(p) and pattern_contains(p2, q)
                    for p2 in other.rules
                ):
                    continue
                if any(
                    _specificity(q2) < _specificity(q) and pattern_contains(q2, p)
                    for q2 in self.rules
                ):
                    continue
                if not q_rule.dominates(p_rule, p_levels):
                    return False
        return True
