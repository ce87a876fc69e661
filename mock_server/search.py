"""Full-text, vector and hybrid search over a collection (ekoDB ``POST /api/search/{c}``).

Framework-free: the route hands in the caller and the raw JSON body. Body (ekoDB's
``SearchQuery``): ``query``, ``fields`` (list or "a,b"), ``weights`` (object or
"a:2,b:1"), ``language``, ``case_sensitive``, ``fuzzy``, ``max_edit_distance``,
``enable_stemming``, ``boost_exact``, ``min_score``, ``limit``, ``vector``,
``vector_field`` (default ``embedding``), ``vector_metric`` (cosine, euclidean,
dotproduct/dot), ``vector_k``, ``vector_threshold``, ``text_weight``, ``vector_weight``,
``select_fields``, ``exclude_fields``, ``filters`` (or ``filter``: the find filter format),
``bypass_cache`` / ``bypass_ripple`` (accepted, no effect here). Answer:
``{"results": [{"record", "score", "matched_fields"}], "total", "execution_time_ms"}``.

Field rules. Every path searched, weighted, filtered on or read as a vector must be readable
by the key: named explicitly and hidden is 403 (as for find); by default only readable
paths are searched. Term statistics (document frequency, field lengths) are computed over
the caller's readable fields only, so a hidden field cannot even shift a score. Records
leave through the same projection as get/find.

Index design (encryption at rest stays honest): nothing is persisted. Each server process
keeps, per collection, an in-memory inverted index built from the decrypted records. Before
every search it reads each record's ciphertext header (a fresh random nonce on every write)
with one indexed scan and decrypts only what is new or changed, so it is correct after
writes from any process sharing the data directory. Cost: one header scan per search
(O(records), no decryption), plaintext of indexed collections held in RAM, and the first
search of a collection decrypts all of it. At most ``MAX_COLLECTIONS`` indexes are kept
(least recently used evicted). Vectors are compared by brute force. Scoring is BM25 per
field times the field weight; text scores are scaled so the best hit of a query scores 1.0.
Stemming is a light English suffix stripper; other languages are tokenized without it.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from mock_server.errors import ApiError, bad_request, forbidden
from mock_server.permissions import Level, PermissionDenied, Rule, Scope
from mock_server.query import Filter, QueryError, parse_filter, validate_field_path
from mock_server.realtime import check_collection

__all__ = ["MAX_COLLECTIONS", "SearchService"]

MAX_COLLECTIONS: Final = 64
DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 1000
MAX_QUERY_CHARS: Final = 4096
MAX_QUERY_TERMS: Final = 64
MAX_VECTOR_DIM: Final = 8192
MAX_FIELDS: Final = 256
MAX_EDIT: Final = 5
DEFAULT_VECTOR_FIELD: Final = "embedding"
K1: Final = 1.2
B: Final = 0.75
EXACT_BOOST: Final = 2.0
STEM_FACTOR: Final = 0.8
FUZZY_FACTOR: Final = 0.7
LANGUAGES: Final = ("english", "spanish", "french", "german", "italian", "portuguese",
                    "dutch", "none")
METRICS: Final = {"cosine": "cosine", "euclidean": "euclidean", "dotproduct": "dot",
                  "dot_product": "dot", "dot": "dot"}
_KEYS: Final = frozenset({
    "query", "fields", "weights", "language", "case_sensitive", "fuzzy", "max_edit_distance",
    "enable_stemming", "boost_exact", "min_score", "limit", "vector", "vector_field",
    "vector_metric", "vector_k", "vector_threshold", "text_weight", "vector_weight",
    "select_fields", "exclude_fields", "filters", "filter", "bypass_cache", "bypass_ripple"})
_TOKEN: Final = re.compile(r"\w+", re.UNICODE)


class Caller(Protocol):
    @property
    def scope(self) -> Scope: ...


class Records(Protocol):
    """What search needs from the DataStore (``mock_server.datastore.DataStore`` fits)."""

    def record_versions(self, collection: str) -> list[tuple[bytes, bytes]]: ...

    def load_versions(self, collection: str, ridxs: Any
                      ) -> dict[bytes, tuple[bytes, dict[str, Any]]]: ...


def _invalid(message: str) -> ApiError:
    return bad_request(message, "validation_error")


# --------------------------------------------------------------------------- text analysis


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light English suffix stripper (plurals, -ing, -ed, -ly): enough to match run/running."""
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("edly", ""), ("ed", ""),
                         ("ly", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: len(word) - len(suffix)] + keep
            if suffix in ("ing", "ed") and len(base) > 3 and base[-1] == base[-2] \
                    and base[-1] not in "lsz":
                base = base[:-1]  # running -> runn -> run
            return base
    return word


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance, or ``limit + 1`` as soon as it must exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def _auto_distance(term: str) -> int:
    """Elasticsearch's AUTO: 0 edits up to 2 characters, 1 up to 5, then 2."""
    return 0 if len(term) <= 2 else 1 if len(term) <= 5 else 2


def _texts(value: Any, path: str, out: dict[str, list[str]]) -> None:
    """Collect string values by dotted path; arrays keep their parent's path."""
    if isinstance(value, str):
        out.setdefault(path, []).append(value)
    elif isinstance(value, Mapping):
        for key, child in value.items():
            if isinstance(key, str):
                _texts(child, f"{path}.{key}" if path else key, out)
    elif isinstance(value, list):
        for child in value:
            if isinstance(child, (str, Mapping, list)):  # vectors: skip numbers fast
                _texts(child, path, out)


def _at_or_below(path: str, base: str) -> bool:
    return path == base or path.startswith(base + ".")


# --------------------------------------------------------------------------- the index


@dataclass
class _Doc:
    version: bytes
    record: dict[str, Any]
    #: field path -> tokens as written (case kept)
    tokens: dict[str, list[str]]
    #: field path -> lowercase term -> count
    counts: dict[str, dict[str, int]]
    vectors: dict[str, tuple[float, ...] | None] = field(default_factory=dict)


def _make_doc(version: bytes, record: dict[str, Any]) -> _Doc:
    texts: dict[str, list[str]] = {}
    _texts({k: v for k, v in record.items() if k != "id"}, "", texts)
    tokens = {path: [t for text in values for t in _TOKEN.findall(text)]
              for path, values in texts.items()}
    counts: dict[str, dict[str, int]] = {}
    for path, words in tokens.items():
        bag: dict[str, int] = {}
        for word in words:
            low = word.lower()
            bag[low] = bag.get(low, 0) + 1
        counts[path] = bag
    return _Doc(version, record, tokens, counts)


class _Index:
    """One collection's documents and postings (lowercase term -> blind ids), kept in sync."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.docs: dict[bytes, _Doc] = {}
        self.order: dict[bytes, int] = {}
        self.postings: dict[str, set[bytes]] = {}
        self.stems: dict[str, set[str]] = {}
        #: field path -> total tokens over all documents (for BM25's average field length)
        self.field_tokens: dict[str, int] = {}

    def _add(self, ridx: bytes, doc: _Doc) -> None:
        self.docs[ridx] = doc
        for path, words in doc.tokens.items():
            self.field_tokens[path] = self.field_tokens.get(path, 0) + len(words)
        postings = self.postings
        for bag in doc.counts.values():
            for term in bag:
                ids = postings.get(term)
                if ids is None:
                    ids = postings[term] = set()
                    self.stems.setdefault(stem(term), set()).add(term)
                ids.add(ridx)

    def _remove(self, ridx: bytes) -> None:
        doc = self.docs.pop(ridx)
        for path, words in doc.tokens.items():
            left = self.field_tokens.get(path, 0) - len(words)
            if left > 0:
                self.field_tokens[path] = left
            else:
                self.field_tokens.pop(path, None)
        for bag in doc.counts.values():
            for term in bag:
                ids = self.postings.get(term)
                if ids is not None:
                    ids.discard(ridx)
                    if not ids:
                        del self.postings[term]
                        group = self.stems.get(stem(term))
                        if group is not None:
                            group.discard(term)
                            if not group:
                                del self.stems[stem(term)]

    def sync(self, records: Records, collection: str) -> None:
        """Bring the index up to date: decrypt only records that are new or changed."""
        versions = records.record_versions(collection)
        self.order = {ridx: i for i, (ridx, _) in enumerate(versions)}
        for gone in [r for r in self.docs if r not in self.order]:
            self._remove(gone)
        stale = [ridx for ridx, tag in versions
                 if (doc := self.docs.get(ridx)) is None or doc.version != tag]
        if not stale:
            return
        loaded = records.load_versions(collection, stale)
        for ridx in stale:
            if ridx in self.docs:
                self._remove(ridx)
            if ridx in loaded:
                tag, record = loaded[ridx]
                self._add(ridx, _make_doc(tag, record))
            else:
                self.order.pop(ridx, None)


# --------------------------------------------------------------------------- the request


@dataclass
class _Request:
    terms: list[str]
    fields: tuple[str, ...] | None
    weights: dict[str, float]
    stemming: bool
    case_sensitive: bool
    fuzzy: bool
    max_edit: int | None
    boost_exact: bool
    min_score: float | None
    limit: int
    vector: tuple[float, ...] | None
    vector_field: str
    metric: str
    vector_k: int | None
    vector_threshold: float | None
    text_weight: float
    vector_weight: float
    select: tuple[str, ...] | None
    exclude: tuple[str, ...] | None
    filter: Filter | None


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false")
    return value


def _number(body: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or not low <= value <= high:
        raise _invalid(f"{key} must be a number between {low:g} and {high:g}")
    return float(value)


def _int(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"{key} must be an integer between {low} and {high}")
    return value


def _path(value: object, where: str) -> str:
    try:
        return validate_field_path(value, where=where)
    except QueryError as exc:
        raise _invalid(str(exc)) from None


def _paths(value: object, key: str) -> tuple[str, ...] | None:
    """A list of paths, or ekoDB's comma-separated string form."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",") if p.strip()]
    if not isinstance(value, list):
        raise _invalid(f"{key} must be an array of field paths or a comma-separated string")
    if len(value) > MAX_FIELDS:
        raise _invalid(f"{key}: at most {MAX_FIELDS} field paths")
    return tuple(_path(p, f"{key}[{i}]") for i, p in enumerate(value))


def _weights(value: object) -> dict[str, float]:
    if value is None:
        return {}
    pairs: list[tuple[object, object]]
    if isinstance(value, str):
        pairs = []
        for part in (p.strip() for p in value.split(",") if p.strip()):
            key, sep, number = part.rpartition(":")
            if not sep:
                raise _invalid(f"weights: {part[:64]!r} is not 'field:weight'")
            try:
                pairs.append((key, float(number)))
            except ValueError:
                raise _invalid(f"weights: {number[:32]!r} is not a number") from None
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise _invalid("weights must be an object {field: weight} or 'field:weight,...'")
    if len(pairs) > MAX_FIELDS:
        raise _invalid(f"weights: at most {MAX_FIELDS} fields")
    out: dict[str, float] = {}
    for name, weight in pairs:
        path = _path(name, "weights")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                math.isfinite(weight) and 0 <= weight <= 1000):
            raise _invalid(f"weights[{path!r}] must be a number between 0 and 1000")
        out[path] = float(weight)
    return out


def _vector(value: object, key: str = "vector") -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_VECTOR_DIM:
        raise _invalid(f"{key} must be an array of 1 to {MAX_VECTOR_DIM} numbers")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
               for x in value):
        raise _invalid(f"{key} must contain only finite numbers")
    return tuple(float(x) for x in value)


def parse_request(body: object) -> _Request:
    """Validate a search body (400 naming the problem); unknown keys are refused."""
    if not isinstance(body, dict):
        raise _invalid("the search body must be a JSON object")
    unknown = sorted(str(k) for k in body if k not in _KEYS)
    if unknown:
        raise _invalid(f"unknown key {unknown[0][:64]!r} in the search body; allowed keys are "
                       f"{', '.join(sorted(_KEYS))}")
    query = body.get("query")
    if query is not None and not isinstance(query, str):
        raise _invalid("query must be a string")
    if query is not None and len(query) > MAX_QUERY_CHARS:
        raise _invalid(f"query is longer than {MAX_QUERY_CHARS} characters")
    case_sensitive = _bool(body, "case_sensitive", False)
    terms = list(dict.fromkeys(t if case_sensitive else t.lower()
                               for t in _TOKEN.findall(query or "")))
    if len(terms) > MAX_QUERY_TERMS:
        raise _invalid(f"query has more than {MAX_QUERY_TERMS} distinct terms")
    vector = _vector(body.get("vector"))
    if not terms and vector is None:
        raise _invalid("give a query with at least one word, a vector, or both")
    language = body.get("language")
    if language is not None and (not isinstance(language, str)
                                 or language.lower() not in LANGUAGES):
        raise _invalid(f"language must be one of {', '.join(LANGUAGES)}")
    english = language is None or language.lower() == "english"
    metric_name = body.get("vector_metric") or "cosine"
    if not isinstance(metric_name, str) or metric_name.lower() not in METRICS:
        raise _invalid("vector_metric must be cosine, euclidean or dotproduct")
    if "filters" in body and "filter" in body:
        raise _invalid("give filters or filter, not both")
    try:
        flt = parse_filter(body.get("filters", body.get("filter")))
    except QueryError as exc:
        raise _invalid(str(exc)) from None
    text_weight = _number(body, "text_weight", 0, 1)
    vector_weight = _number(body, "vector_weight", 0, 1)
    if text_weight is None:
        text_weight = 1 - vector_weight if vector_weight is not None else 0.5
    if vector_weight is None:
        vector_weight = 1 - text_weight
    if terms and vector is not None and text_weight + vector_weight == 0:
        raise _invalid("text_weight and vector_weight may not both be 0")
    limit = _int(body, "limit", 1, MAX_LIMIT)
    vector_field = body.get("vector_field")
    return _Request(
        terms=terms,
        fields=_paths(body.get("fields"), "fields"),
        weights=_weights(body.get("weights")),
        stemming=_bool(body, "enable_stemming", english) and english,
        case_sensitive=case_sensitive,
        fuzzy=_bool(body, "fuzzy", False),
        max_edit=_int(body, "max_edit_distance", 0, MAX_EDIT),
        boost_exact=_bool(body, "boost_exact", True),
        min_score=_number(body, "min_score", -1e12, 1e12),
        limit=limit if limit is not None else DEFAULT_LIMIT,
        vector=vector,
        vector_field=(DEFAULT_VECTOR_FIELD if vector_field is None
                      else _path(vector_field, "vector_field")),
        metric=METRICS[metric_name.lower()],
        vector_k=_int(body, "vector_k", 1, MAX_LIMIT),
        vector_threshold=_number(body, "vector_threshold", -1e12, 1e12),
        text_weight=text_weight,
        vector_weight=vector_weight,
        select=_paths(body.get("select_fields"), "select_fields"),
        exclude=_paths(body.get("exclude_fields"), "exclude_fields"),
        filter=flt,
    )


# --------------------------------------------------------------------------- scoring


def _doc_vector(doc: _Doc, path: str) -> tuple[float, ...] | None:
    """The vector stored at ``path`` (a list of numbers or ekoDB's {"type":"Vector","value"})."""
    if path in doc.vectors:
        return doc.vectors[path]
    node: Any = doc.record
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if isinstance(node, Mapping) and node.get("type") == "Vector":
        node = node.get("value")
    vec: tuple[float, ...] | None = None
    if isinstance(node, list) and node and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in node):
        vec = tuple(float(x) for x in node)
    doc.vectors[path] = vec
    return vec


def _similarity(metric: str, a: tuple[float, ...], b: tuple[float, ...]) -> float | None:
    if metric == "dot":
        return math.fsum(x * y for x, y in zip(a, b, strict=True))
    if metric == "euclidean":
        return 1.0 / (1.0 + math.dist(a, b))
    na, nb = math.hypot(*a), math.hypot(*b)
    if na == 0 or nb == 0:
        return None
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def _narrow(collection: str, record: dict[str, Any], select: tuple[str, ...] | None,
            exclude: tuple[str, ...] | None) -> dict[str, Any]:
    """The request's own select/exclude after the key's rules (can only narrow), as find."""
    if select is None and not exclude:
        return record
    rule = Rule(read=True, select_fields=select,
                exclude_fields=tuple(p for p in exclude or () if p.split(".", 1)[0] != "id"))
    return Scope(is_admin=False, read_only=True, rules={collection: rule}).project(
        collection, record)


class SearchService:
    """Runs searches against per-collection in-memory indexes (see the module docstring)."""

    def __init__(self, records: Records, *, max_collections: int = MAX_COLLECTIONS,
                 clock: Any = time.perf_counter) -> None:
        self._records = records
        self._indexes: OrderedDict[str, _Index] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_collections
        self._clock = clock

    def indexed(self) -> list[str]:
        """Collections whose index this process holds (most recently searched last)."""
        with self._lock:
            return list(self._indexes)

    def _index(self, collection: str) -> _Index:
        with self._lock:
            index = self._indexes.get(collection)
            if index is None:
                index = self._indexes[collection] = _Index()
                while len(self._indexes) > self._max:
                    self._indexes.popitem(last=False)
            self._indexes.move_to_end(collection)
            return index

    def search(self, caller: Caller, collection: object, body: object) -> dict[str, Any]:
        started = self._clock()
        collection = check_collection(collection)
        scope = caller.scope
        try:
            scope.require(collection, Level.READ)
        except PermissionDenied as exc:
            raise forbidden(str(exc)) from None
        req = parse_request(body)
        self._check_readable(scope, collection, req)
        index = self._index(collection)
        with index.lock:
            try:
                index.sync(self._records, collection)
            except ApiError:  # dropped (404): forget what was held of it
                with self._lock:
                    if self._indexes.get(collection) is index:
                        del self._indexes[collection]
                raise
            hits = self._run(scope, collection, index, req)
            total = len(hits)
            results = [{"record": _narrow(collection, scope.project(collection, doc.record),
                                          req.select, req.exclude),
                        "score": score, "matched_fields": matched}
                       for score, _, doc, matched in hits[: req.limit]]
        elapsed = int((self._clock() - started) * 1000)
        return {"results": results, "total": total, "execution_time_ms": elapsed}

    # ---------------------------------------------------------------- permission checks

    @staticmethod
    def _check_readable(scope: Scope, collection: str, req: _Request) -> None:
        """Naming a hidden path anywhere in the request is 403, as filtering on it in find."""
        named: set[str] = set(req.fields or ()) | set(req.weights)
        if req.filter is not None:
            named |= set(req.filter.fields())
        if req.vector is not None:
            named.add(req.vector_field)
        hidden = sorted(p for p in named if not scope.readable(collection, p))
        if hidden:
            shown = ", ".join(repr(p) for p in hidden[:10])
            raise forbidden(f"this API key may not search, weight, filter or read field(s) "
                            f"{shown} of {collection!r}")

    # ---------------------------------------------------------------- the search itself

    def _run(self, scope: Scope, collection: str, index: _Index, req: _Request
             ) -> list[tuple[float, int, _Doc, list[str]]]:
        candidates: Iterator[tuple[bytes, _Doc]] = iter(index.docs.items())
        if req.filter is not None:
            flt = req.filter
            candidates = ((r, d) for r, d in candidates if flt.matches(d.record))
        allowed = dict(candidates)
        text = self._text_scores(scope, collection, index, allowed, req) if req.terms else {}
        vector = (self._vector_scores(allowed, req, keep=set(text))
                  if req.vector is not None else {})
        hybrid = bool(req.terms) and req.vector is not None
        top_text = max((s for s, _ in text.values()), default=0.0)
        scores: list[tuple[float, int, _Doc, list[str]]] = []
        for ridx in set(text) | set(vector):
            matched: list[str] = []
            score = 0.0
            if ridx in text:
                raw, fields = text[ridx]
                norm = raw / top_text if top_text > 0 else 0.0
                score += norm * (req.text_weight if hybrid else 1.0)
                matched.extend(fields)
            if ridx in vector:
                sim, unit = vector[ridx]
                score += unit * req.vector_weight if hybrid else sim
                matched.append(req.vector_field)
            if req.min_score is not None and score < req.min_score:
                continue
            scores.append((score, index.order.get(ridx, 0), allowed[ridx], sorted(set(matched))))
        scores.sort(key=lambda hit: (-hit[0], hit[1]))
        return scores

    @staticmethod
    def _searchable(scope: Scope, collection: str, index: _Index, req: _Request
                    ) -> dict[str, float]:
        """Field path -> weight, over paths present in the index the caller may read."""
        out: dict[str, float] = {}
        for path in index.field_tokens:
            if req.fields is not None and not any(_at_or_below(path, f) for f in req.fields):
                continue
            if not scope.readable(collection, path):
                continue
            weight = 1.0
            for base, given in req.weights.items():
                if _at_or_below(path, base):
                    weight = given
            if weight > 0:
                out[path] = weight
        return out

    def _expansions(self, index: _Index, term: str, req: _Request) -> dict[str, float]:
        """Index terms a query term matches, with a factor (exact > stem > fuzzy)."""
        low = term.lower()
        out: dict[str, float] = {}
        if low in index.postings:
            out[low] = EXACT_BOOST if req.boost_exact else 1.0
        if req.stemming:
            for other in index.stems.get(stem(low), ()):
                out.setdefault(other, STEM_FACTOR)
        if req.fuzzy:
            limit = req.max_edit if req.max_edit is not None else _auto_distance(low)
            if limit > 0:
                for other in index.postings:
                    if other not in out and abs(len(other) - len(low)) <= limit:
                        dist = edit_distance(low, other, limit)
                        if dist <= limit:
                            out[other] = FUZZY_FACTOR * (1 - dist / (len(low) + 1))
        return out

    def _text_scores(self, scope: Scope, collection: str, index: _Index,
                     allowed: Mapping[bytes, _Doc], req: _Request
                     ) -> dict[bytes, tuple[float, list[str]]]:
        fields = self._searchable(scope, collection, index, req)
        if not fields:
            return {}
        n_docs = max(len(index.docs), 1)
        avg_len = {path: (index.field_tokens.get(path, 0) / n_docs) or 1.0 for path in fields}
        totals: dict[bytes, float] = {}
        matched: dict[bytes, set[str]] = {}
        for term in req.terms:
            best: dict[bytes, tuple[float, set[str]]] = {}
            for cand, factor in self._expansions(index, term, req).items():
                # document frequency over the caller's searchable fields only
                in_fields = [r for r in index.postings.get(cand, ())
                             if any(cand in index.docs[r].counts.get(p, ()) for p in fields)]
                holders = [r for r in in_fields if r in allowed]
                if not holders:
                    continue
                df = len(in_fields)
                idf = math.log(1 + (len(index.docs) - df + 0.5) / (df + 0.5))
                for ridx in holders:
                    doc = index.docs[ridx]
                    score, hit_fields = 0.0, set()
                    for path, weight in fields.items():
                        tf = doc.counts.get(path, {}).get(cand, 0)
                        if not tf:
                            continue
                        if req.case_sensitive and cand == term.lower() and term not in \
                                doc.tokens[path]:
                            continue  # case-sensitive: the exact spelling must occur
                        length = len(doc.tokens[path])
                        norm = tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / avg_len[path]))
                        score += weight * idf * norm
                        hit_fields.add(path)
                    score *= factor
                    if score > 0 and score > best.get(ridx, (0.0, set()))[0]:
                        best[ridx] = (score, hit_fields)
            for ridx, (score, hit_fields) in best.items():
                totals[ridx] = totals.get(ridx, 0.0) + score
                matched.setdefault(ridx, set()).update(hit_fields)
        return {ridx: (score, sorted(matched[ridx])) for ridx, score in totals.items()}

    @staticmethod
    def _vector_scores(allowed: Mapping[bytes, _Doc], req: _Request, keep: set[bytes]
                       ) -> dict[bytes, tuple[float, float]]:
        """ridx -> (similarity, similarity scaled to [0, 1] for hybrid).

        The ``vector_k`` nearest (default: ``limit``), plus every record in ``keep`` (the
        text matches of a hybrid search), so a text hit is never scored without its vector.
        """
        assert req.vector is not None
        sims: list[tuple[float, bytes]] = []
        for ridx, doc in allowed.items():
            vec = _doc_vector(doc, req.vector_field)
            if vec is None or len(vec) != len(req.vector):
                continue
            sim = _similarity(req.metric, req.vector, vec)
            if sim is None or (req.vector_threshold is not None and sim < req.vector_threshold):
                continue
            sims.append((sim, ridx))
        sims.sort(key=lambda item: -item[0])
        k = req.vector_k if req.vector_k is not None else req.limit
        sims = sims[:k] + [item for item in sims[k:] if item[1] in keep]
        if req.metric == "cosine":
            return {r: (s, (s + 1) / 2) for s, r in sims}
        if req.metric == "euclidean":
            return {r: (s, s) for s, r in sims}
        low = min((s for s, _ in sims), default=0.0)
        high = max((s for s, _ in sims), default=0.0)
        span = high - low
        return {r: (s, (s - low) / span if span > 0 else 1.0) for s, r in sims}


