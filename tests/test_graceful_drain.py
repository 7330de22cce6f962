"""SIGTERM semantics in process: stop accepting, let in-flight requests finish, keep data.

Rules: the whole daemon with the FNN simulator on loopback; the stop event is what the
SIGTERM handler sets.
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx
import trio

from fiberlinkd.daemon import run_daemon
from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.simulator import Simulator
from fiberlinkd.fnn.types import NewInvoiceResult
from fiberlinkd.ledger.auth import insert_app
from tests.conftest import make_config
from tests.plugin_client import PluginClient

SLOW_S = 1.0


@attrs.define
class SlowInvoices(FnnClient):
    """The real client, but new_invoice takes a second: a request stays in flight."""

    async def new_invoice(self, **kwargs: Any) -> NewInvoiceResult:
        await trio.sleep(SLOW_S)
        return await super().new_invoice(**kwargs)


async def test_stop_lets_an_in_flight_tip_create_finish_and_keeps_it(
    tmp_path, sim: Simulator
) -> None:
    config = make_config(tmp_path, sim.url)
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        stop = trio.Event()
        node = SlowInvoices(http, sim.url, call_timeout_s=5.0)
        rt = await nursery.start(
            lambda task_status: run_daemon(config, node=node, stop=stop, task_status=task_status)
        )
        with trio.fail_after(5):
            while rt.node_state.currency is None:
                await trio.sleep(0.01)
        await rt.ledger.transact(insert_app, "forum", "s" * 32, rt.clock.now_ms())
        plugin = PluginClient(http, rt.api_urls[0], "forum", "s" * 32)
        answers: list[dict[str, Any]] = []

        async def create() -> None:
            answers.append(
                await plugin.call(
                    "tip.create",
                    {
                        "amount": "1",
                        "asset": "CKB",
                        "postId": "1",
                        "fromUserId": "1",
                        "toUserId": "2",
                    },
                )
            )

        async with trio.open_nursery() as requests:
            requests.start_soon(create)
            await trio.sleep(SLOW_S / 4)  # the request is now waiting on the node
            stop.set()  # what SIGTERM does
        [answer] = answers
        assert "result" in answer, answer
    # The daemon has stopped; the tip it answered with is in the database.
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        stop = trio.Event()
        node = FnnClient(http, sim.url, call_timeout_s=5.0)
        rt = await nursery.start(
            lambda task_status: run_daemon(config, node=node, stop=stop, task_status=task_status)
        )
        count = await rt.ledger.read(
            lambda conn: conn.execute("SELECT count(*) FROM tip_intents").fetchone()[0]
        )
        assert count == 1
        stop.set()
