"""Result pages: find_page's has_more and keyset cursors, iter_find following them.

Against the session's reference server. The regression of issue 16 §9: offset paging skipped
1,000 of 1,500 records while each page was deleted after it was read.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from ekoclient import AsyncClient, Client, where
from ekoclient.errors import InvalidArgumentError, ValidationError
from ekoclient.models import Page


def _collection(admin: Client, records: list[dict[str, Any]]) -> str:
    name = f"paging_{uuid.uuid4().hex[:10]}"
    admin.datastore.create_collection(name)
    for start in range(0, len(records), 1000):
        result = admin.datastore.batch_insert(name, records[start:start + 1000])
        assert not result.failed
    return name


def test_find_page_says_whether_more_match_and_continues_after_its_cursor(
        admin: Client) -> None:
    name = _collection(admin, [{"n": i, "team": "ab"[i % 2]} for i in range(25)])
    seen: list[int] = []
    page = admin.datastore.find_page(name, where("team").eq("a"), sort=[("n", False)], limit=5)
    pages = 1
    while page.has_more:
        assert page.next_cursor is not None and len(page) == 5
        seen += [r["n"] for r in page]
        page = admin.datastore.find_page(name, where("team").eq("a"), sort=[("n", False)],
                                         limit=5, cursor=page.next_cursor)
        pages += 1
    seen += [r["n"] for r in page.items]
    assert page.next_cursor is None
    assert seen == list(range(24, -1, -2)) and pages == 3


def test_ties_in_the_sort_key_are_neither_repeated_nor_lost(admin: Client) -> None:
    name = _collection(admin, [{"n": i, "bucket": i % 3} for i in range(40)])
    got = [r["n"] for r in admin.datastore.iter_find(name, sort=["bucket"], page_size=7)]
    assert sorted(got) == list(range(40)) and len(got) == 40
    assert [n % 3 for n in got] == sorted(n % 3 for n in got)


def test_iter_find_misses_nothing_while_read_pages_are_deleted(admin: Client) -> None:
    """A worker that deletes each page after reading it still sees every record once."""
    name = _collection(admin, [{"n": i} for i in range(1500)])
    seen: list[int] = []
    batch: list[str] = []
    for record in admin.datastore.iter_find(name, page_size=100):
        seen.append(record["n"])
        batch.append(record["id"])
        if len(batch) == 100:
            admin.datastore.batch_delete(name, batch)
            batch = []
    assert sorted(seen) == list(range(1500))


def test_records_inserted_during_iteration_do_not_shift_the_rest(admin: Client) -> None:
    name = _collection(admin, [{"n": i, "k": i * 2} for i in range(300)])
    seen: list[int] = []
    for i, record in enumerate(admin.datastore.iter_find(name, sort=["k"], page_size=50)):
        seen.append(record["n"])
        if i % 50 == 0:  # a record that sorts before everything read so far
            admin.datastore.insert(name, {"n": -1, "k": -1})
    assert [n for n in seen if n >= 0] == list(range(300))


def test_a_limit_over_the_service_page_is_refused_before_sending(admin: Client) -> None:
    with pytest.raises(InvalidArgumentError, match=r"limit=5000 .* \(1000\); use iter_find"):
        admin.datastore.find("anything", limit=5000)
    with pytest.raises(InvalidArgumentError, match="page_size"):
        admin.datastore.iter_find("anything", page_size=1001)


def test_a_cursor_used_with_another_sort_or_forged_is_refused(admin: Client) -> None:
    name = _collection(admin, [{"n": i} for i in range(5)])
    page = admin.datastore.find_page(name, sort=["n"], limit=2)
    assert page.next_cursor is not None
    with pytest.raises(ValidationError, match="another sort"):
        admin.datastore.find_page(name, sort=[("n", False)], cursor=page.next_cursor)
    with pytest.raises(ValidationError, match="cursor"):
        admin.datastore.find_page(name, sort=["n"], cursor="bm90IGEgY3Vyc29y")


class Item(BaseModel):
    n: int


def test_find_page_and_iter_find_parse_into_a_model(admin: Client) -> None:
    name = _collection(admin, [{"n": i} for i in range(3)])
    page: Page[Item] = admin.datastore.find_page(name, sort=["n"], model=Item)
    assert page.items == [Item(n=0), Item(n=1), Item(n=2)] and not page.has_more
    assert [i.n for i in admin.datastore.iter_find(name, sort=["n"], model=Item)] == [0, 1, 2]


async def test_async_iter_find_follows_cursors(async_admin: AsyncClient, admin: Client) -> None:
    name = _collection(admin, [{"n": i} for i in range(12)])
    got = [r["n"] async for r in async_admin.datastore.iter_find(name, sort=["n"], page_size=5,
                                                                 limit=11)]
    assert got == list(range(11))
    page = await async_admin.datastore.find_page(name, sort=["n"], limit=12)
    assert len(page) == 12 and not page.has_more and page.next_cursor is None
