"""The one place that wires fiberlinkd together and runs it.

Lifetimes nest: the ledger and the HTTP client are opened outside the actors' nursery.
Every actor starts under the supervisor with ``nursery.start``; READY=1 goes to systemd
only after all have started. SIGTERM/SIGINT: STOPPING=1, the API stops accepting and
drains in-flight requests within ``[api] graceful_timeout_s``, then the actors are
cancelled (steps that must not be torn run shielded inside the actors).

With ``[onchain] enabled`` it also loads the hot wallet key (a bad or exposed key file stops
startup), opens an httpx client for the CKB node, and starts the on-chain executor, which
first checks that the CKB node's genesis matches the Fiber node's chain (mainnet ↔ Fibb,
testnet ↔ Fibt, else dev) and refuses to pay on a mismatch.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import httpx
import trio

from fiberlinkd import __version__
from fiberlinkd.clock import Clock, WallClock
from fiberlinkd.config import Config, read_secret
from fiberlinkd.fnn.types import FiberNode
from fiberlinkd.ledger import open_ledger
from fiberlinkd.logsetup import kv
from fiberlinkd.nodewatch import NodeState, NodeWatcher
from fiberlinkd.runtime import Runtime, WatchList
from fiberlinkd.sdnotify import Notifier
from fiberlinkd.supervisor import ActorRun, Supervisor

if TYPE_CHECKING:
    from fiberlinkd.onchain.service import OnchainService

log = logging.getLogger(__name__)

ActorFactory = Callable[[Runtime], ActorRun]


def default_actors(rt: Runtime, stop_accepting: trio.Event) -> list[tuple[str, ActorRun]]:
    """The daemon's actors in start order. The API comes last: it serves only when the
    rest is running."""
    from fiberlinkd.actors import build_actors

    return build_actors(rt, stop_accepting)


def build_onchain(
    config: Config, http: httpx.AsyncClient, environ: dict[str, str]
) -> OnchainService | None:
    """The hot wallet and the CKB client when ``[onchain] enabled``.

    Errors: :class:`fiberlinkd.config.ConfigError` for a missing, unreadable, exposed
    (group/world-accessible) or malformed hot wallet key.
    """
    if not config.onchain.enabled:
        return None
    from fiberlinkd.ckb.client import CkbClient
    from fiberlinkd.onchain.service import OnchainService
    from fiberlinkd.onchain.wallet import load_hot_wallet

    wallet = load_hot_wallet(config.onchain, environ)
    url = config.onchain.ckb_rpc_url
    return OnchainService(config.onchain, wallet, CkbClient(http, url), url=url)


def onchain_actors(rt: Runtime) -> list[tuple[str, ActorRun]]:
    """The on-chain executor, when on-chain payouts are enabled."""
    if rt.onchain is None:
        return []
    from fiberlinkd.onchain.executor import OnchainExecutor

    return [("onchain", OnchainExecutor(rt).run)]


def build_fnn_client(config: Config, http: httpx.AsyncClient, environ: dict[str, str]) -> FiberNode:
    from fiberlinkd.fnn.client import FnnClient

    token = read_secret(config.fnn.token_file, "fnn-token", environ=environ)
    return FnnClient(http, config.fnn.url, token=token, call_timeout_s=config.fnn.call_timeout_s)


async def run_daemon(
    config: Config,
    *,
    node: FiberNode | None = None,
    clock: Clock | None = None,
    environ: dict[str, str] | None = None,
    notifier: Notifier | None = None,
    actors: Callable[[Runtime, trio.Event], Sequence[tuple[str, ActorRun]]] = default_actors,
    supervisor: Supervisor | None = None,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
    inline_ledger: bool = False,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Returns normally on a clean stop.

    Errors: :class:`fiberlinkd.supervisor.GaveUp` when an actor keeps crashing;
    :class:`fiberlinkd.ledger.LedgerError` when the database cannot be opened.
    """
    environ = dict(os.environ) if environ is None else environ
    clock = clock or WallClock()
    notifier = notifier or Notifier(environ)
    supervisor = supervisor or Supervisor()
    stop = trio.Event() if stop is None else stop
    timeout = httpx.Timeout(config.fnn.call_timeout_s, connect=config.fnn.connect_timeout_s)
    ckb_timeout = httpx.Timeout(config.onchain.call_timeout_s, connect=config.fnn.connect_timeout_s)
    async with (
        open_ledger(config.state_path, inline=inline_ledger) as ledger,
        httpx.AsyncClient(timeout=timeout) as http,
        httpx.AsyncClient(timeout=ckb_timeout) as ckb_http,
    ):
        fnn = node if node is not None else build_fnn_client(config, http, environ)
        onchain = build_onchain(config, ckb_http, environ)
        rt = Runtime(
            config=config,
            ledger=ledger,
            node=fnn,
            node_state=NodeState(),
            clock=clock,
            supervisor=supervisor,
            started_at_ms=clock.now_ms(),
            watch_list=WatchList(ttl_ms=int(config.settlement.watch_ttl_s * 1000)),
            onchain=onchain,
        )
        if onchain is not None:
            log.info(
                "on-chain payouts enabled",
                extra=kv(ckb_url=onchain.url, confirmations=config.onchain.confirmations),
            )
        stop_accepting = trio.Event()
        log.info("starting", extra=kv(version=__version__, state_dir=config.state_dir))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, stop)
            watcher = NodeWatcher(fnn, rt.node_state, clock)
            await nursery.start(supervisor.supervise, "nodewatch", watcher.run)
            built = list(actors(rt, stop_accepting))
            built += onchain_actors(rt)  # the API is started last whatever its position
            front = [(n, r) for n, r in built if n == "api"]
            back = [(n, r) for n, r in built if n != "api"]
            async with trio.open_nursery() as back_nursery:
                for name, run in back:
                    await back_nursery.start(supervisor.supervise, name, run)
                async with trio.open_nursery() as front_nursery:
                    for name, run in front:
                        await front_nursery.start(supervisor.supervise, name, run)
                    notifier.ready()
                    log.info("ready", extra=kv(actors=",".join(n for n, _ in built)))
                    if notifier.watchdog_interval_s:
                        nursery.start_soon(_watchdog, notifier, notifier.watchdog_interval_s)
                    task_status.started(rt)
                    await stop.wait()
                    notifier.stopping()
                    log.info("stopping: draining requests")
                    stop_accepting.set()
                    front_nursery.cancel_scope.deadline = (
                        trio.current_time() + config.api.graceful_timeout_s
                    )
                back_nursery.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    log.info("stopped")


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal received", extra=kv(signal=signal.Signals(signum).name))
            stop.set()


async def _watchdog(notifier: Notifier, interval_s: float) -> None:
    while True:
        notifier.watchdog()
        await trio.sleep(interval_s)
