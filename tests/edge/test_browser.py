"""The demo page in a real browser: Debian's Chromium, headless, driven by playwright.

A `WebDemo` (private Redis, two shards, gateway, edge over uvicorn on
loopback) with its background writer off and a deterministic seed; the test
writes through the demo and checks what the page's table shows against the
truth computed here from the rows written (never with the engine's code).
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from raycluster.client import LiveList
from raycluster.edge.demo import WebDemo
from raycluster.errors import DesyncError
from raycluster.livequery import LiveDelta

CHROMIUM = Path("/usr/bin/chromium")
PAGE = 50  # the page's default page size (its first window's limit)
WAIT_MS = 15_000

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}"),
]

playwright_api = pytest.importorskip("playwright.async_api")

ROWS_JS = "() => [...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.id)"


def ordered(rows: dict[str, dict[str, Any]], key: Any, where: Any = None) -> list[str]:
    """Every id of `rows` that passes `where`, in total order (`key`, then id ascending)."""
    ids = [i for i, r in rows.items() if where is None or where(r)]
    return sorted(ids, key=lambda i: (key(rows[i]), i))


async def table_ids(page: Any) -> list[str]:
    ids: list[str] = await page.evaluate(ROWS_JS)
    return ids


async def expect_ids(page: Any, want: list[str], what: str) -> None:
    """Wait until the table shows exactly `want`, in order (fail with a diff if not)."""
    js = f"want => JSON.stringify(({ROWS_JS})()) === JSON.stringify(want)"
    try:
        await page.wait_for_function(js, arg=want, timeout=WAIT_MS)
    except playwright_api.TimeoutError:
        got = await table_ids(page)
        assert got == want, f"{what}: the table never showed the truth"


async def row_cells(page: Any, agg_id: str) -> list[str]:
    cells: list[str] = await page.eval_on_selector(
        f'#rows tr[data-id="{agg_id}"]', "tr => [...tr.cells].map(td => td.textContent)"
    )
    return cells


def shown(row: dict[str, Any]) -> list[str]:
    """How the page renders a row's columns (null as an em dash)."""
    cols = ("name", "kind", "site", "temp", "owner")
    return ["—" if row.get(c) is None else str(row[c]) for c in cols]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def open_page(
    demo: WebDemo, browser: Any, query: str = "", height: int = 800
) -> tuple[Any, list[str]]:
    page = await browser.new_page(viewport={"width": 1280, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{demo.base_url}/{query}#token={demo.token}")
    return page, errors


async def test_demo_page_shows_a_live_window_and_scrolls_by_reanchoring(tmp_path: Path) -> None:
    async with (
        WebDemo(rows=240, rate=0, seed=11) as demo,
        playwright_api.async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            # max=100: the window grows to 100 rows, then slides.
            page, errors = await open_page(demo, browser, "?max=100")
            rows = demo.rows_now
            by_name = ordered(rows, lambda r: r["name"])

            # The first window: the first page of the truth, with the rows' values.
            await expect_ids(page, by_name[:PAGE], "first window")
            await page.wait_for_selector("#state[data-state=live]", timeout=WAIT_MS)
            for agg_id in (by_name[0], by_name[PAGE - 1]):
                assert (await row_cells(page, agg_id))[2:7] == shown(rows[agg_id])
            assert "SSE" in await page.inner_text("#counts")

            # A new row that sorts right after the 10th lands at index 10 and flashes.
            tenth = rows[by_name[9]]
            await demo.upsert("new-1", {**tenth, "name": tenth["name"] + "a", "owner": "zed"})
            by_name = ordered(rows, lambda r: r["name"])
            assert by_name.index("new-1") == 10
            await expect_ids(page, by_name[:PAGE], "after an insert at index 10")
            new_row = page.locator('#rows tr[data-id="new-1"]')
            assert await new_row.get_attribute("data-index") == "10"
            assert "flash-enter" in (await new_row.get_attribute("class") or "")
            assert (await row_cells(page, "new-1"))[0] == "11"

            # An update of a visible row changes its cells in place.
            first = by_name[0]
            await demo.upsert(first, {**rows[first], "temp": 123})
            await page.wait_for_function(
                "id => document.querySelector(`#rows tr[data-id='${id}'] td.temp`)"
                ".textContent === '123'",
                arg=first,
                timeout=WAIT_MS,
            )
            assert await table_ids(page) == by_name[:PAGE]

            # Scrolling to the bottom grows the window by a page (cursor stays at the top).
            await page.hover("#scroller")
            await page.mouse.wheel(0, 20_000)
            await expect_ids(page, by_name[: 2 * PAGE], "the window grown to two pages")
            # The rows arrive on the stream before the reanchor request returns; the
            # window's state follows when it does.
            await page.wait_for_selector(
                f'#window[data-limit="{2 * PAGE}"]', state="attached", timeout=WAIT_MS
            )
            assert await page.get_attribute("#window", "data-cursor") == "null"

            # At max=100 the next scroll slides it: it starts after the first page's last row.
            await page.mouse.wheel(0, 20_000)
            await expect_ids(page, by_name[PAGE : 3 * PAGE], "the window slid by a page")
            await page.wait_for_function(
                "() => document.querySelector('#window').dataset.cursor !== 'null'",
                timeout=WAIT_MS,
            )
            last = rows[by_name[PAGE - 1]]
            cursor = json.loads(await page.get_attribute("#window", "data-cursor") or "null")
            assert cursor == {"values": [last["name"], by_name[PAGE - 1]]}
            assert await page.is_visible("#top")
            assert (await row_cells(page, by_name[PAGE]))[0] == str(PAGE + 1)

            # The slid window is live too.
            await demo.delete(by_name[PAGE + 1])
            by_name = ordered(rows, lambda r: r["name"])
            await expect_ids(page, by_name[PAGE : 3 * PAGE], "a delete inside the slid window")

            shot = tmp_path / "demo.png"
            await page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
            data = shot.read_bytes()
            assert png_size(data) == (1280, 800)
            assert len(data) > 30_000, "the screenshot looks blank"
            assert not errors, errors
        finally:
            await browser.close()


async def test_demo_page_filters_and_sorts_over_websocket(tmp_path: Path) -> None:
    async with (
        WebDemo(rows=240, rate=0, seed=12) as demo,
        playwright_api.async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            # Short enough that 25 rows overflow it (a window that fits the screen grows).
            page, errors = await open_page(demo, browser, height=600)
            rows = demo.rows_now
            await expect_ids(page, ordered(rows, lambda r: r["name"])[:PAGE], "first window")

            # WebSocket transport, kind = pump, temp >= 50, hottest first, pages of 25.
            await page.select_option("#transport", "ws")
            await page.select_option("#kind", "pump")
            await page.fill("#min-temp", "50")
            await page.select_option("#sort", "temp")
            await page.select_option("#dir", "desc")
            await page.select_option("#page", "25")

            def hot_pumps() -> list[str]:
                def where(r: dict[str, Any]) -> bool:
                    return r["kind"] == "pump" and r["temp"] is not None and r["temp"] >= 50

                return ordered(rows, lambda r: -r["temp"], where)[:25]

            want = hot_pumps()
            assert len(want) == 25, "the seed has too few hot pumps for this test"
            await expect_ids(page, want, "filtered, sorted by temp desc")
            await page.wait_for_function(
                "() => lqDemo.sub.transport === 'ws' && lqDemo.sub.state === 'live'",
                timeout=WAIT_MS,
            )

            # A pump heating up enters at the top; the hottest cooling down leaves.
            cold = next(
                i
                for i, r in rows.items()
                if r["kind"] == "pump" and r["temp"] is not None and r["temp"] < 50
            )
            await demo.upsert(cold, {**rows[cold], "temp": 130})
            await demo.upsert(want[0], {**rows[want[0]], "temp": 20})
            want = hot_pumps()
            assert want[0] == cold
            await expect_ids(page, want, "after one pump entered and one left")
            assert await page.get_attribute("#window", "data-limit") == "25"
            top = page.locator(f'#rows tr[data-id="{cold}"]')
            assert "flash-enter" in (await top.get_attribute("class") or "")
            assert "WS" in await page.inner_text("#counts")

            await page.screenshot(path=str(tmp_path / "filtered.png"))
            assert not errors, errors
        finally:
            await browser.close()


DROP_JS = {
    # A network drop as the page sees it: the stream's fetch is aborted / the socket closes.
    "sse": "() => lqDemo.sub._abort.abort()",
    "ws": "() => lqDemo.sub.client._transports.ws.ws.close()",
}


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_demo_page_resumes_after_a_dropped_connection(transport: str) -> None:
    async with (
        WebDemo(rows=120, rate=0, seed=13) as demo,
        playwright_api.async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page, errors = await open_page(demo, browser)
            rows = demo.rows_now
            await page.select_option("#transport", transport)
            await page.wait_for_function(
                "t => lqDemo.sub.transport === t && lqDemo.sub.complete", arg=transport
            )
            await expect_ids(page, ordered(rows, lambda r: r["name"])[:PAGE], "first window")
            sub_id = await page.evaluate("() => lqDemo.sub.sub")

            # Drop the connection, and write while the page is away: the row that
            # becomes first must be there once the page has resumed.
            await page.evaluate(DROP_JS[transport])
            first = ordered(rows, lambda r: r["name"])[0]
            await demo.upsert("early", {**rows[first], "name": "+" + rows[first]["name"]})
            await page.wait_for_function(
                "() => lqDemo.sub.stats.reconnects === 1 && lqDemo.sub.state === 'live'",
                timeout=WAIT_MS,
            )
            by_name = ordered(rows, lambda r: r["name"])
            assert by_name[0] == "early"
            await expect_ids(page, by_name[:PAGE], "the window after resuming")
            resumed = await page.evaluate("() => [lqDemo.sub.resumed, lqDemo.sub.sub]")
            assert resumed == [True, sub_id], "the resume token was not honoured"

            # Live again: a delete after the resume shows.
            await demo.delete(by_name[3])
            await expect_ids(page, ordered(rows, lambda r: r["name"])[:PAGE], "after resuming")
            assert await page.evaluate("() => lqDemo.sub.stats.gaps") == 0
            assert not errors, errors
        finally:
            await browser.close()


# -- livequery.js on its own (no server): the list and the fence ----------------------

STATIC = Path(__file__).resolve().parents[2] / "raycluster" / "edge" / "static"


async def client_page(browser: Any) -> Any:
    """A blank page with livequery.js loaded (its exports on `globalThis.raycluster`)."""
    page = await browser.new_page()
    await page.add_script_tag(content=(STATIC / "livequery.js").read_text(), type="module")
    await page.wait_for_function("() => globalThis.raycluster !== undefined")
    return page


def random_frames(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    """A valid maintained-mode frame stream (reset, enter, leave, move, update), simulated."""
    held: list[str] = []
    frames: list[dict[str, Any]] = [{"op": "reset", "count": 0}]
    for k in range(n):
        roll = rnd.random()
        row = {"name": f"r{k}", "temp": rnd.randrange(100)}
        if roll < 0.02:
            held = []
            frames.append({"op": "reset", "count": 0})
        elif roll < 0.4 or not held:
            i = rnd.randrange(len(held) + 1)
            agg_id = f"id{k}"
            held.insert(i, agg_id)
            frames.append({"op": "enter", "agg_id": agg_id, "new_index": i, "row": row})
        elif roll < 0.6:
            i = rnd.randrange(len(held))
            frames.append({"op": "leave", "agg_id": held.pop(i), "old_index": i})
        elif roll < 0.8:
            i, j = rnd.randrange(len(held)), rnd.randrange(len(held))
            agg_id = held.pop(i)
            held.insert(j, agg_id)
            frames.append(
                {"op": "move", "agg_id": agg_id, "old_index": i, "new_index": j, "row": row}
            )
        else:
            i = rnd.randrange(len(held))
            frames.append({"op": "update", "agg_id": held[i], "new_index": i, "row": row})
    return frames


async def test_js_live_list_applies_frames_like_the_python_one() -> None:
    rnd = random.Random(5)
    frames = random_frames(rnd, 600)
    # Broken frames too: each must raise DesyncError and leave the list unchanged.
    frames += [
        {"op": "leave", "agg_id": "nobody", "old_index": 0},
        {"op": "enter", "agg_id": "far", "new_index": 10_000},
        {"op": "unmatch", "agg_id": "nobody"},
        {"op": "match", "agg_id": "m1", "row": {"name": "m"}},
        {"op": "update", "agg_id": "m1", "row": {"name": "m2"}},
        {"op": "match", "agg_id": "m1", "row": {"name": "again"}},
        {"op": "unmatch", "agg_id": "m1"},
    ]
    py = LiveList()
    want: list[list[Any]] = []
    for f in frames:
        try:
            py.apply(LiveDelta.model_validate({"version": 1, **f}))
            outcome = "ok"
        except DesyncError:
            outcome = "desync"
        want.append([outcome, py.ids, [i.row for i in py.items]])
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = await client_page(browser)
            got = await page.evaluate(
                """frames => {
                    const { LiveList, DesyncError } = globalThis.raycluster;
                    const list = new LiveList();
                    return frames.map(f => {
                        let outcome = "ok";
                        try { list.apply({ version: 1, ...f }); }
                        catch (e) { if (!(e instanceof DesyncError)) throw e; outcome = "desync"; }
                        return [outcome, list.ids, list.items.map(i => i.row)];
                    });
                }""",
                frames,
            )
        finally:
            await browser.close()
    assert [w[0] for w in want].count("desync") == 4
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"frame {k} {frames[k]}: js {g[:2]} != python {w[:2]}"


async def test_js_fence_drops_stale_frames_and_resyncs_on_a_gap() -> None:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = await client_page(browser)
            result = await page.evaluate(
                """() => {
                    const { LiveQueryClient } = globalThis.raycluster;
                    const client = new LiveQueryClient("http://unused", "t");
                    const resyncs = [];
                    client._transport = () => ({ resync: async s => resyncs.push(s.id) });
                    const sub = new globalThis.raycluster.LiveSubscription(client, "s1", {}, {});
                    const ids = () => sub.rows.map(r => r.id);
                    const enter = (id, i) => ({ op: "enter", agg_id: id, new_index: i, row: {} });
                    const out = {};
                    sub._subscribed("sub1", false);
                    sub._frame(0, 3, { op: "reset", count: 2 }, "sub1.3.0");
                    sub._frame(1, 3, enter("a", 0), "sub1.3.1");
                    sub._frame(2, 3, enter("b", 1), "sub1.3.2");
                    out.window = [ids(), sub.complete, sub.state, sub.token];
                    sub._frame(2, 3, enter("dup", 0));           // repeated seq: stale
                    sub._frame(3, 2, enter("old", 0));           // older epoch: stale
                    sub._frame(3, 2, { op: "reset", count: 0 }); // older epoch's reset: stale
                    out.stale = [ids(), sub.stats.stale, resyncs.length];
                    sub._frame(5, 3, enter("c", 0));             // seq 4 missing: gap
                    sub._frame(6, 3, enter("d", 0));             // during the gap: dropped
                    out.gap = [ids(), sub.stats.gaps, resyncs.length, sub.stats.stale];
                    sub._frame(7, 4, { op: "reset", count: 1 }); // the resync's reset
                    sub._frame(8, 4, enter("e", 0));
                    sub._frame(9, 4, { op: "leave", agg_id: "zz", old_index: 0 }); // desync
                    out.after = [ids(), sub.stats.desyncs, resyncs.length];
                    return out;
                }"""
            )
        finally:
            await browser.close()
    assert result["window"] == [["a", "b"], True, "live", "sub1.3.2"]
    assert result["stale"] == [["a", "b"], 3, 0]
    assert result["gap"] == [["a", "b"], 1, 1, 4]
    assert result["after"] == [["e"], 1, 2]
