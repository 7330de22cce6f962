"""Shared fixtures: a simulator on loopback, and the whole daemon wired to it.

Rules for every test module: real SQLite files in tmp_path, loopback 127.0.0.1 port 0 only,
fakes or the FNN simulator (never unittest.mock for our own seams).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from fiberlinkd.config import Config, load_config
from fiberlinkd.daemon import run_daemon
from fiberlinkd.fnn.client import FnnClient
from fiberlinkd.fnn.simulator import Simulator, open_simulator
from fiberlinkd.ledger.auth import insert_app
from fiberlinkd.runtime import Runtime
from tests.plugin_client import PluginClient


def make_config(
    tmp_path: Path, fnn_url: str = "http://127.0.0.1:9/", **sections: dict[str, Any]
) -> Config:
    lines = [f'state_dir = "{tmp_path / "state"}"', "[api]", 'listen = "127.0.0.1:0"']
    lines += ["graceful_timeout_s = 1.0"]
    lines += ["[fnn]", f'url = "{fnn_url}"', "call_timeout_s = 2.0"]
    lines += ["[admin]", f'socket = "{tmp_path / "admin.sock"}"']
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(
                f"{key} = {value!r}".replace("'", '"')
                if isinstance(value, str)
                else f"{key} = {value}"
            )
    path = tmp_path / "fiberlinkd.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path, environ={})


@attrs.define
class RunningDaemon:
    rt: Runtime
    sim: Simulator
    url: str
    plugin: PluginClient
    http: httpx.AsyncClient
    stop: trio.Event


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with open_simulator(network="Fibd") as simulator:
        yield simulator


async def start_daemon(
    nursery: trio.Nursery, config: Config, sim: Simulator, http: httpx.AsyncClient
) -> RunningDaemon:
    stop = trio.Event()
    node = FnnClient(http, sim.url, call_timeout_s=config.fnn.call_timeout_s)
    rt: Runtime = await nursery.start(
        lambda task_status: run_daemon(config, node=node, stop=stop, task_status=task_status)
    )
    with trio.fail_after(5):
        while rt.node_state.currency is None:
            await trio.sleep(0.01)
    api = _api_url(rt)
    secret = secrets.token_hex(32)
    await rt.ledger.transact(insert_app, "forum", secret, rt.clock.now_ms())
    return RunningDaemon(rt, sim, api, PluginClient(http, api, "forum", secret), http, stop)


def _api_url(rt: Runtime) -> str:
    return rt.api_urls[0]
