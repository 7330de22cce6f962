"""The daemon's life cycle, from sd_notify datagrams to SIGTERM.

Rules under test:
- ``sd_notify``: READY=1, STOPPING=1 and WATCHDOG=1 are single datagrams on
  ``$NOTIFY_SOCKET`` (path or abstract ``@name``); without it every call is a no-op; the
  watchdog interval is half of ``$WATCHDOG_USEC`` and only for our own ``$WATCHDOG_PID``;
- in process (fake clock): READY=1 only after every actor has started; on stop, STOPPING=1,
  the API gets ``[api] graceful_timeout_s`` to drain, then the other actors are cancelled and
  ``run_daemon`` returns; an actor that keeps crashing ends ``run_daemon`` with ``GaveUp``;
- the real ``fiberlinkd run`` process (marked slow): with FNN down it still starts, sends
  READY=1, WATCHDOG=1 pings every ``WATCHDOG_USEC / 2`` and STOPPING=1, answers SIGTERM
  with exit 0 within 5 s, and a restart keeps the data.
Sockets live in short temporary directories (AF_UNIX paths are limited to 108 bytes);
network addresses are 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from fiberlinkd.config import ApiConfig, Config
from fiberlinkd.daemon import run_daemon
from fiberlinkd.fnn.errors import FnnConnectError
from fiberlinkd.ledger.store import DB_FILENAME, SCHEMA_VERSION
from fiberlinkd.runtime import Runtime
from fiberlinkd.sdnotify import Notifier
from fiberlinkd.supervisor import ActorRun, GaveUp, Supervisor

SIGTERM_EXIT_BOUND_S = 5.0
READY_BOUND_S = 30.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flk-"))
    assert len(str(path)) < 60, "AF_UNIX socket paths must stay short"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def notify_socket(path: Path | str) -> Iterator[socket.socket]:
    if isinstance(path, Path):
        path.unlink(missing_ok=True)  # left by an earlier run in the same test
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.settimeout(0.2)
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket, max_s: float = 0.5) -> list[str]:
    """What arrives until the socket is quiet for its timeout, or ``max_s`` at most
    (watchdog pings every 0.1 s never leave it quiet)."""
    messages = []
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return messages


# --- the sd_notify client -----------------------------------------------------------------


def test_notifier_sends_one_datagram_per_state(short_dir: Path) -> None:
    path = short_dir / "notify"
    with notify_socket(path) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
        assert drain(sock) == ["READY=1", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"flk-test-{os.getpid()}-{time.monotonic_ns()}"
    with notify_socket("\0" + name) as sock:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert drain(sock) == ["READY=1"]


def test_notifier_without_notify_socket_does_nothing() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready()
    notifier.stopping()


def test_notifier_ignores_a_vanished_socket(short_dir: Path) -> None:
    Notifier({"NOTIFY_SOCKET": str(short_dir / "gone")}).ready()


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "nonsense"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid(
    environ: dict[str, str], interval: float | None
) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent", **environ}).watchdog_interval_s == interval


# --- run_daemon in process, on the fake clock ---------------------------------------------


class DownNode:
    """A FiberNode whose node is down: every call fails to connect."""

    calls = 0

    async def node_info(self) -> object:
        DownNode.calls += 1
        raise FnnConnectError("node_info: connection refused")


class RecordingNotifier(Notifier):
    def __init__(self, watchdog_interval_s: float | None = None) -> None:
        super().__init__({})
        self.watchdog_interval_s = watchdog_interval_s
        self.sent: list[tuple[float, str]] = []

    def notify(self, message: str) -> None:
        self.sent.append((trio.current_time(), message))


def make_config(tmp_path: Path, graceful_timeout_s: float = 10.0) -> Config:
    return attrs.evolve(
        Config(),
        state_dir=str(tmp_path / "state"),
        api=ApiConfig(listen="127.0.0.1:0", graceful_timeout_s=graceful_timeout_s),
    )


@attrs.define
class Events:
    log: list[tuple[float, str]] = attrs.field(factory=list)

    def add(self, what: str) -> None:
        self.log.append((trio.current_time(), what))


def fake_actors(events: Events, *, api_drains_s: float | None, start_delay_s: float = 0.0):  # type: ignore[no-untyped-def]
    def build(rt: Runtime, stop_accepting: trio.Event) -> list[tuple[str, ActorRun]]:
        async def worker(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await trio.sleep(start_delay_s)
            events.add("worker started")
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                events.add("worker cancelled")

        async def api(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            events.add("api started")
            task_status.started()
            await stop_accepting.wait()
            events.add("api draining")
            if api_drains_s is None:
                await trio.sleep_forever()
            await trio.sleep(api_drains_s)
            events.add("api drained")

        assert rt.node_state.info is None
        return [("worker", worker), ("api", api)]

    return build


async def test_ready_is_sent_only_after_every_actor_started(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    events = Events()
    notifier = RecordingNotifier()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_daemon(
                make_config(tmp_path),
                node=DownNode(),  # type: ignore[arg-type]
                environ={},
                notifier=notifier,
                actors=fake_actors(events, api_drains_s=0, start_delay_s=3),
                stop=stop,
                inline_ledger=True,
                task_status=task_status,
            )
        )
        assert notifier.sent == [(3.0, "READY=1")]
        assert [what for _, what in events.log] == ["worker started", "api started"]
        stop.set()
    assert (tmp_path / "state" / DB_FILENAME).is_file()


async def test_stop_drains_the_api_then_cancels_the_actors(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    events = Events()
    notifier = RecordingNotifier()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_daemon(
                make_config(tmp_path, graceful_timeout_s=10),
                node=DownNode(),  # type: ignore[arg-type]
                environ={},
                notifier=notifier,
                actors=fake_actors(events, api_drains_s=2),
                stop=stop,
                inline_ledger=True,
            )
        )
        await trio.sleep(100)
        stop.set()
    assert notifier.sent == [(0.0, "READY=1"), (100.0, "STOPPING=1")]
    assert events.log[-3:] == [
        (100.0, "api draining"),
        (102.0, "api drained"),
        (102.0, "worker cancelled"),
    ]
    assert trio.current_time() == 102.0


async def test_an_api_that_does_not_drain_is_cut_at_the_graceful_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    events = Events()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_daemon(
                make_config(tmp_path, graceful_timeout_s=7),
                node=DownNode(),  # type: ignore[arg-type]
                environ={},
                notifier=RecordingNotifier(),
                actors=fake_actors(events, api_drains_s=None),
                stop=stop,
                inline_ledger=True,
            )
        )
        await trio.sleep(1)
        stop.set()
    assert trio.current_time() == 8.0
    assert events.log[-1] == (8.0, "worker cancelled")


async def test_watchdog_pings_follow_ready_at_the_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = RecordingNotifier(watchdog_interval_s=15)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_daemon(
                make_config(tmp_path),
                node=DownNode(),  # type: ignore[arg-type]
                environ={},
                notifier=notifier,
                actors=fake_actors(Events(), api_drains_s=0),
                stop=stop,
                inline_ledger=True,
            )
        )
        await trio.sleep(50)
        stop.set()
    assert notifier.sent == [
        (0.0, "READY=1"),
        (0.0, "WATCHDOG=1"),
        (15.0, "WATCHDOG=1"),
        (30.0, "WATCHDOG=1"),
        (45.0, "WATCHDOG=1"),
        (50.0, "STOPPING=1"),
    ]


async def test_the_daemon_starts_while_the_node_is_down_and_keeps_asking(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    DownNode.calls = 0
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(
            lambda task_status: run_daemon(
                make_config(tmp_path),
                node=DownNode(),  # type: ignore[arg-type]
                environ={},
                notifier=RecordingNotifier(),
                actors=fake_actors(Events(), api_drains_s=0),
                stop=stop,
                inline_ledger=True,
                task_status=task_status,
            )
        )
        await trio.sleep(60)
        assert runtime.node_state.info is None
        assert runtime.node_state.last_error is not None
        assert "connection refused" in runtime.node_state.last_error
        assert DownNode.calls >= 5
        stop.set()


async def test_an_actor_that_keeps_crashing_ends_the_daemon_with_gave_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    def crashing(rt: Runtime, stop_accepting: trio.Event) -> list[tuple[str, ActorRun]]:
        async def settlement(
            *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started()
            await trio.sleep(1)
            raise RuntimeError("poller bug")

        return [("settlement", settlement)]

    with pytest.RaisesGroup(
        pytest.RaisesExc(GaveUp, match="actor settlement crashed 4 times"), flatten_subgroups=True
    ):
        await run_daemon(
            make_config(tmp_path),
            node=DownNode(),  # type: ignore[arg-type]
            environ={},
            notifier=RecordingNotifier(),
            actors=crashing,
            supervisor=Supervisor(max_restarts=3, window_s=60),
            inline_ledger=True,
        )


# --- the real process ---------------------------------------------------------------------


def closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def write_run_config(tmp_path: Path, short_dir: Path) -> Path:
    config = tmp_path / "fiberlinkd.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[api]\n"
        'listen = "127.0.0.1:0"\n'
        "[fnn]\n"
        f'url = "http://127.0.0.1:{closed_loopback_port()}"\n'
        "[admin]\n"
        f'socket = "{short_dir / "admin.sock"}"\n'
    )
    return config


@attrs.define
class DaemonRun:
    messages: list[tuple[float, str]]
    returncode: int
    exit_s: float
    stderr: str


def run_until_sigterm(
    config: Path,
    short_dir: Path,
    tmp_path: Path,
    *,
    watchdogs: int = 3,
    signum: int = signal.SIGTERM,
) -> DaemonRun:
    """Start ``fiberlinkd run``, wait for READY=1 and some pings, signal, wait for exit."""
    notify_path = short_dir / "notify"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIBERLINKD_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="200000")
    env.pop("CREDENTIALS_DIRECTORY", None)
    stderr_path = tmp_path / f"stderr-{time.monotonic_ns()}.log"
    messages: list[tuple[float, str]] = []
    with notify_socket(notify_path) as sock, stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fiberlinkd", "run", "--config", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + READY_BOUND_S
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                messages.extend((time.monotonic(), m) for m in drain(sock))
                texts = [m for _, m in messages]
                if "READY=1" in texts and texts.count("WATCHDOG=1") >= watchdogs:
                    break
            sent_at = time.monotonic()
            proc.send_signal(signum)
            try:
                returncode = proc.wait(timeout=SIGTERM_EXIT_BOUND_S + 15)
            except subprocess.TimeoutExpired:
                returncode = -999
            exit_s = time.monotonic() - sent_at
            messages.extend((time.monotonic(), m) for m in drain(sock))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return DaemonRun(messages, returncode, exit_s, stderr_path.read_text())


@pytest.mark.slow
def test_real_daemon_notifies_systemd_and_stops_cleanly_on_sigterm(
    tmp_path: Path, short_dir: Path
) -> None:
    run = run_until_sigterm(write_run_config(tmp_path, short_dir), short_dir, tmp_path)
    texts = [m for _, m in run.messages]
    assert "READY=1" in texts, run.stderr
    ready_index = texts.index("READY=1")
    assert texts[ready_index + 1 :].count("WATCHDOG=1") >= 3, texts
    assert "WATCHDOG=1" not in texts[:ready_index], "watchdog pings start after READY=1"
    pings = [t for t, m in run.messages if m == "WATCHDOG=1"]
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0  # 0.1 s nominal
    assert texts[-1] == "STOPPING=1", texts
    assert run.returncode == 0, run.stderr
    assert run.exit_s < SIGTERM_EXIT_BOUND_S, (
        f"SIGTERM took {run.exit_s:.1f} s (bound {SIGTERM_EXIT_BOUND_S} s)\n{run.stderr}"
    )
    assert "msg=ready" in run.stderr
    assert "FNN not answering node_info; retrying" in run.stderr  # started with FNN down
    assert "msg=stopped" in run.stderr
    assert (tmp_path / "state" / DB_FILENAME).is_file()


@pytest.mark.slow
def test_real_daemon_stops_cleanly_on_sigint(tmp_path: Path, short_dir: Path) -> None:
    run = run_until_sigterm(
        write_run_config(tmp_path, short_dir),
        short_dir,
        tmp_path,
        watchdogs=1,
        signum=signal.SIGINT,
    )
    assert run.returncode == 0, run.stderr
    assert [m for _, m in run.messages][-1] == "STOPPING=1"
    assert run.exit_s < SIGTERM_EXIT_BOUND_S, f"SIGINT took {run.exit_s:.1f} s"


@pytest.mark.slow
def test_a_restarted_daemon_keeps_its_data(tmp_path: Path, short_dir: Path) -> None:
    config = write_run_config(tmp_path, short_dir)
    first = run_until_sigterm(config, short_dir, tmp_path, watchdogs=1)
    assert first.returncode == 0, first.stderr
    database = tmp_path / "state" / DB_FILENAME
    conn = sqlite3.connect(database)
    with conn:
        conn.execute(
            "INSERT INTO apps (app_id, hmac_secret, created_at) VALUES ('forum', ?, 1)",
            ("k" * 32,),
        )
    conn.close()
    second = run_until_sigterm(config, short_dir, tmp_path, watchdogs=1)
    assert second.returncode == 0, second.stderr
    assert "READY=1" in [m for _, m in second.messages]
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("SELECT app_id FROM apps").fetchall() == [("forum",)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
