"""``admin reconcile [--last] [--json]``, the ``reconciler`` status section, and the CLI's
exit codes (0 clean, 2 problems, 1 could not run).

Rules: handlers are called in-process with a real Runtime on a SQLite file in tmp_path; the
CLI is exercised against a tiny canned admin socket (a Unix socket in tmp_path) so only the
client side and its exit codes are under test.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from fiberlinkd.admin.protocol import AdminError
from fiberlinkd.admin.registry import CommandContext, get_command, status_sections
from fiberlinkd.admin.roles import Caller, Role
from fiberlinkd.reconciler import admin_commands
from fiberlinkd.reconciler.actor import Reconciler
from tests.test_reconciler_support import FakeNode, open_runtime, seed_clean, tamper

ROOT = Caller(uid=0, name="root", role=Role.SUPER_ADMIN, app_ids=frozenset(), source="root")


def _ctx(rt: Any) -> CommandContext:
    return CommandContext(rt, ROOT)


def test_the_commands_are_registered_for_super_admins_and_reconcile_is_audited() -> None:
    reconcile = get_command("reconcile")
    last = get_command("reconcile.last")
    assert reconcile is not None
    assert last is not None
    assert reconcile.mutates  # it may freeze payouts
    assert not last.mutates
    assert "reconciler" in status_sections()


async def test_reconcile_runs_here_when_no_reconciler_actor_is_running(tmp_path: Path) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        result = await admin_commands.reconcile(_ctx(rt), {})
        assert result["status"] == "CLEAN"
        assert result["trigger"] == "admin"
        json.dumps(result)  # the answer is JSON as it is


async def test_reconcile_wakes_the_running_actor_and_answers_with_the_next_run(
    tmp_path: Path, autojump_clock: object
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.supervisor.supervise, "reconciler", Reconciler(rt).run)
            await trio.sleep(60)  # the first scheduled run is over
            await tamper(rt, "UPDATE balances SET settled = settled + 1 WHERE user_id = 'bob'")
            result = await admin_commands.reconcile(_ctx(rt), {})
            nursery.cancel_scope.cancel()
        assert result["id"] == 2
        assert result["trigger"] == "on-demand"
        assert result["status"] == "PROBLEMS"
        assert "BALANCE_MISMATCH" in {f["code"] for f in result["findings"]}


async def test_reconcile_last_shows_the_newest_finished_run_or_says_there_is_none(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with open_runtime(tmp_path, node) as rt:
        await seed_clean(rt, node)
        with pytest.raises(AdminError) as refused:
            await admin_commands.reconcile_last(_ctx(rt), {})
        assert refused.value.code == "not_found"
        assert await admin_commands.status_section(rt) == {"last_run": None}

        node.down = True
        await Reconciler(rt).run_once("schedule")
        last = await admin_commands.reconcile_last(_ctx(rt), {})
        assert (last["id"], last["status"]) == (1, "PROBLEMS")
        section = await admin_commands.status_section(rt)
        assert section["last_run"] == 1
        assert section["status"] == "PROBLEMS"
        assert section["findings"] == {"INFO": 0, "WARNING": 1, "CRITICAL": 0}


def test_the_human_rendering_lists_findings() -> None:
    text = admin_commands.render_run(
        {
            "id": 7,
            "trigger": "admin",
            "status": "PROBLEMS",
            "finished_at_ms": 0,
            "summary": {"duration_ms": 12, "findings": {"CRITICAL": 1, "WARNING": 0}},
            "findings": [{"severity": "CRITICAL", "code": "X", "message": "m", "refs": {}}],
        }
    )
    assert text.splitlines()[0] == (
        "reconcile run 7 (admin): PROBLEMS, finished 1970-01-01T00:00:00.000Z in 12 ms"
    )
    assert "1 critical, 0 warning, 0 info" in text
    assert "CRITICAL  X     m" in text


# --- the CLI's exit codes --------------------------------------------------------------------


def _canned_socket(path: Path, reply: dict[str, Any]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn, conn.makefile("rb") as lines:
                request = json.loads(lines.readline())
                answer = {"id": request["id"], **reply, "command": request["command"]}
                conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    admin_commands.add_cli(sub)
    ns = parser.parse_args(argv)
    code: int = ns.handler(ns)
    return code


def _run(status: str) -> dict[str, Any]:
    return {
        "id": 1,
        "trigger": "admin",
        "status": status,
        "started_at_ms": 0,
        "finished_at_ms": 1,
        "summary": {},
        "findings": [],
    }


@pytest.mark.parametrize(("status", "exit_code"), [("CLEAN", 0), ("PROBLEMS", 2), ("ERROR", 1)])
def test_the_cli_exit_code_follows_the_run_status(
    tmp_path: Path, status: str, exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "admin.sock"
    thread = _canned_socket(path, {"ok": True, "result": _run(status)})
    assert _run_cli(["reconcile", "--socket", str(path), "--json"]) == exit_code
    thread.join(5)
    assert json.loads(capsys.readouterr().out)["status"] == status


def test_reconcile_last_asks_for_the_last_run(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    seen: list[str] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn, conn.makefile("rb") as lines:
                request = json.loads(lines.readline())
                seen.append(request["command"])
                conn.sendall(
                    json.dumps({"id": 1, "ok": True, "result": _run("CLEAN")}).encode() + b"\n"
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert _run_cli(["reconcile", "--last", "--socket", str(path)]) == 0
    thread.join(5)
    assert seen == ["reconcile.last"]


def test_the_cli_exits_1_when_the_daemon_cannot_be_reached_or_refuses(tmp_path: Path) -> None:
    assert _run_cli(["reconcile", "--socket", str(tmp_path / "nobody.sock")]) == 1
    path = tmp_path / "admin.sock"
    thread = _canned_socket(
        path, {"ok": False, "error": {"code": "not_found", "message": "no run yet"}}
    )
    assert _run_cli(["reconcile", "--last", "--socket", str(path)]) == 1
    thread.join(5)
