"""`raycluster.notebook.show`: an HTML table in IPython, updated in place by a real subscription."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cli_helpers import ENTITY, Tier1
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from support import wait_for
from traitlets.config import Config

import raycluster
from raycluster import LiveQuery, SortKey, gt
from raycluster.notebook import LiveTable, show


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """An IPython shell whose display publishes are captured (what a notebook would receive)."""
    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    pub = CapturingDisplayPublisher()
    shell.display_pub = pub
    try:
        yield pub.outputs
    finally:
        InteractiveShell.clear_instance()


def _ids_in(html: str, ids: list[str]) -> list[str]:
    """The ids among `ids`, in the order the table shows them."""
    return sorted(
        (i for i in ids if f"<td>{i}</td>" in html), key=lambda i: html.index(f"<td>{i}</td>")
    )


async def test_show_renders_the_window_and_updates_it_in_place(
    tier1: Tier1, published: list[dict[str, Any]]
) -> None:
    for i in range(6):
        await tier1.upsert(f"a{i}", {"name": f"n{i}", "kind": "pump", "temp": 10 * i})
    query = LiveQuery(
        entity=ENTITY, where=[gt("temp", 15)], sort=[SortKey(column="temp", desc=True)], limit=3
    )
    gw = await raycluster.connect(tier1.url, tier1.settings)
    try:
        sub = await gw.subscribe(tier1.tenant, query)
        table = show(sub, columns=["name", "temp"])
        assert isinstance(table, LiveTable)
        assert len(published) == 1
        first = published[0]
        display_id = first["transient"]["display_id"]
        assert not first["update"]
        html = first["data"]["text/html"]
        every = [f"a{i}" for i in range(6)] + ["hot"]
        assert _ids_in(html, every) == ["a5", "a4", "a3"]
        assert "<th>name</th><th>temp</th>" in html and "<td>n5</td>" in html

        await tier1.upsert("hot", {"name": "hot<&>", "kind": "pump", "temp": 99})

        def updated() -> bool:
            last = published[-1]
            return bool(last["update"]) and _ids_in(last["data"]["text/html"], every) == [
                "hot",
                "a5",
                "a4",
            ]

        await wait_for(updated, 20, what="an in-place update showing the new row first")
        assert {p["transient"]["display_id"] for p in published} == {display_id}
        assert "hot&lt;&amp;&gt;" in published[-1]["data"]["text/html"]  # escaped
        assert table.redraws >= 1
        assert table._repr_html_().count("<tr>") == 4  # header + 3 rows, a static snapshot

        table.stop()
        seen = len(published)
        await tier1.upsert("hotter", {"name": "x", "kind": "pump", "temp": 120})
        await wait_for(lambda: sub.rows.ids[:1] == ["hotter"], 20, what="the next frame")
        assert len(published) == seen  # stopped: no more redraws
        assert sub.on_change is None
        await sub.close()
    finally:
        await gw.aclose()


async def test_redraws_are_throttled_and_the_last_change_is_drawn(
    tier1: Tier1, published: list[dict[str, Any]]
) -> None:
    query = LiveQuery(entity=ENTITY, sort=[SortKey(column="temp", desc=True)], limit=2)
    gw = await raycluster.connect(tier1.url, tier1.settings)
    try:
        sub = await gw.subscribe(tier1.tenant, query)
        table = LiveTable(sub, max_fps=2.0).display()  # at most one redraw per 0.5 s
        for t in range(1, 31):
            await tier1.upsert("x", {"name": "x", "temp": t})
        await wait_for(
            lambda: ">30</td>" in published[-1]["data"]["text/html"],
            20,
            what="the last write drawn",
        )
        assert 1 <= table.redraws <= 4, table.redraws
        await sub.close()
    finally:
        await gw.aclose()
