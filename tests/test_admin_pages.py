"""ListEntries' pages (issue #21): a page holds the entries asked for, unless it is the last, and
the pages together hold every entry. Here the admin core alone, over a catalogue whose cursor
steps bring what a Redis SCAN step can: nothing (it read only other keys), fewer than asked, or
more; tests/test_client_admin.py pages a real Redis through the client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from semcache_server.core.admin import CacheAdmin, Counts, Listed, Scope
from semcache_server.core.domain import CachedEntry


def entry(number: int, owner: str = "") -> Listed:
    cached = CachedEntry(
        entry_id=f"{number:032x}",
        partition="p",
        prompt=f"Question {number}?",
        text="",
        model="llama3.2",
        system="",
        options={},
        history=(),
        namespace="shared",
        embedding_model="local/all-MiniLM-L6-v2",
        created_at=0.0,
        owner=owner,
    )
    return Listed(cached, expires_at=None)


def ids(*numbers: int) -> list[str]:
    return [entry(number).entry.entry_id for number in numbers]


class SteppedCatalog:
    """A catalogue that hands out its entries in the steps given, whatever count is asked; the
    cursor is the next step's number ("" after the last), as Redis's cursors are numbers."""

    def __init__(self, steps: list[list[Listed]]) -> None:
        self.steps = steps
        self.asked: list[int] = []

    async def page(
        self, namespace: str | None, cursor: str, count: int
    ) -> tuple[list[Listed], str]:
        self.asked.append(count)
        step = int(cursor or 0)
        following = step + 1
        return self.steps[step], str(following) if following < len(self.steps) else ""

    def scan(self, namespace: str | None) -> AsyncIterator[Listed]:
        raise NotImplementedError

    async def count(self, namespace: str | None) -> int:
        raise NotImplementedError

    async def get(self, entry_id: str) -> Listed | None:
        raise NotImplementedError

    async def delete(self, entry_id: str) -> bool:
        raise NotImplementedError

    async def counts(self, namespace: str | None) -> Counts:
        raise NotImplementedError

    async def memory_bytes(self) -> int:
        raise NotImplementedError


async def all_pages(admin: CacheAdmin, scope: Scope, page_size: int) -> list[list[str]]:
    """The entry ids of every page, following the tokens as a client does."""
    pages: list[list[str]] = []
    token = ""
    while True:
        listed, token = await admin.page(scope, page_size, token)
        pages.append([item.entry.entry_id for item in listed])
        if not token:
            return pages


@pytest.mark.asyncio
async def test_a_page_is_not_empty_when_the_first_cursor_steps_find_no_entry() -> None:
    """The reported bug: page_size 2 gave an empty first page and a next-page token."""
    steps = [[], [], [entry(1)], [], [entry(2), entry(3)], [entry(4)]]
    admin = CacheAdmin(SteppedCatalog(steps), index_size=lambda: 0)

    pages = await all_pages(admin, Scope(None), page_size=2)

    assert pages == [ids(1, 2, 3), ids(4)]  # the step that filled it brought one more


@pytest.mark.asyncio
async def test_each_step_asks_for_what_the_page_still_lacks() -> None:
    catalog = SteppedCatalog([[entry(1)], [], [entry(2)], [entry(3)]])
    admin = CacheAdmin(catalog, index_size=lambda: 0)

    listed, token = await admin.page(Scope(None), 3, "")

    assert len(listed) == 3 and token == ""
    assert catalog.asked == [3, 2, 2, 1]


@pytest.mark.asyncio
async def test_a_tenant_of_a_shared_namespace_gets_full_pages_of_its_own_entries() -> None:
    """Its scope drops the others' entries from each step: a step of only theirs is no page."""
    steps = [[entry(1, "bob"), entry(2, "bob")], [entry(3, "carol")], [entry(4, "bob")]]
    admin = CacheAdmin(SteppedCatalog(steps), index_size=lambda: 0)

    pages = await all_pages(admin, Scope("shared", owner="carol"), page_size=1)

    assert pages == [ids(3), []]  # the last step held only bob's


@pytest.mark.asyncio
async def test_a_listing_with_no_entry_in_reach_is_one_empty_last_page() -> None:
    admin = CacheAdmin(SteppedCatalog([[], [], []]), index_size=lambda: 0)

    assert await admin.page(Scope(None), 0, "") == ([], "")
