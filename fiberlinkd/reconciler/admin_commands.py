"""Admin commands of the reconciler, and its ``status`` section.

- ``reconcile`` (SUPER, audited: it may freeze payouts): a run that starts after the
  request. When the reconciler actor is running it is woken (``rt.reconcile_wakeup``) and
  the handler waits for the next finished run; otherwise the run happens right here.
- ``reconcile.last`` (SUPER): the newest finished run with its findings.
- status section ``reconciler``: the last run's id, status, time and counts.

CLI: ``fiberlinkd admin reconcile [--last] [--json]`` exits **0** when the run is CLEAN,
**2** when it found problems, **1** when it could not run (daemon unreachable, run ERROR,
no run yet). ``fiberlinkd admin export …`` is client-side (:mod:`.export`).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from fiberlinkd.admin.cli import EXIT_FAILURE, EXIT_OK, admin_parser, cmd_admin, render_table
from fiberlinkd.admin.protocol import AdminError, not_found
from fiberlinkd.admin.registry import (
    CommandContext,
    Scope,
    admin_command,
    register_status_section,
)
from fiberlinkd.clock import iso_ms
from fiberlinkd.ledger.reconcile import (
    StoredRun,
    finished_run_after,
    last_finished_run,
    latest_run_id,
)
from fiberlinkd.reconciler.actor import Reconciler
from fiberlinkd.reconciler.export import add_export_cli
from fiberlinkd.runtime import Runtime

ACTOR_NAME = "reconciler"  # the supervisor name the daemon runs the actor under
RUN_WAIT_BOUND_S = 1_800.0  # the longest an admin waits for a requested run
POLL_INTERVAL_S = 0.25
KEEPALIVE_S = 15.0  # progress lines keep the client's per-line timeout from firing

EXIT_PROBLEMS = 2
_EXIT_BY_STATUS = {"CLEAN": EXIT_OK, "PROBLEMS": EXIT_PROBLEMS}


async def request_run(
    rt: Runtime, progress: Callable[[dict[str, Any]], Awaitable[None]] | None = None
) -> StoredRun:
    """A reconcile run that starts after this call; returns it when finished.

    Errors: :class:`AdminError` (``failed``) when no run finished within
    :data:`RUN_WAIT_BOUND_S`.
    """
    actor = rt.supervisor.statuses.get(ACTOR_NAME)
    if actor is None or actor.state != "running":
        return await Reconciler(rt).run_once("admin")
    baseline = await rt.ledger.read(latest_run_id)
    rt.reconcile_wakeup.set()
    waited = 0.0
    with trio.move_on_after(RUN_WAIT_BOUND_S):
        while True:
            run = await rt.ledger.read(finished_run_after, baseline)
            if run is not None:
                return run
            await trio.sleep(POLL_INTERVAL_S)
            waited += POLL_INTERVAL_S
            if progress is not None and waited % KEEPALIVE_S < POLL_INTERVAL_S:
                await progress({"waiting_for_run_s": int(waited)})
    raise AdminError("failed", f"no reconcile run finished within {RUN_WAIT_BOUND_S:g} s")


@admin_command("reconcile", mutates=True, scope=Scope.SUPER)
async def reconcile(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Run the reconciler now and report its findings."""
    del args
    run = await request_run(ctx.rt, ctx.progress)
    return run.as_dict()


@admin_command("reconcile.last", mutates=False, scope=Scope.SUPER)
async def reconcile_last(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """The last finished reconcile run and its findings."""
    del args
    run = await ctx.rt.ledger.read(last_finished_run)
    if run is None:
        raise not_found("the reconciler has not finished a run yet")
    return run.as_dict()


async def status_section(rt: Runtime) -> dict[str, Any]:
    run = await rt.ledger.read(last_finished_run)
    if run is None:
        return {"last_run": None}
    return {
        "last_run": run.id,
        "status": run.status,
        "trigger": run.trigger,
        "finished_at": iso_ms(run.finished_at) if run.finished_at else None,
        "duration_ms": run.summary.get("duration_ms"),
        "findings": run.summary.get("findings", {}),
        "error": run.summary.get("error"),
    }


register_status_section("reconciler", status_section)


# --- CLI ---------------------------------------------------------------------------------------


def render_run(result: dict[str, Any], _ns: argparse.Namespace | None = None) -> str:
    counts = result.get("summary", {}).get("findings", {})
    finished = result.get("finished_at_ms")
    head = (
        f"reconcile run {result['id']} ({result['trigger']}): {result['status']}"
        + (f", finished {iso_ms(finished)}" if finished is not None else "")
        + (
            f" in {result['summary']['duration_ms']} ms"
            if "duration_ms" in result["summary"]
            else ""
        )
    )
    lines = [head]
    if counts:
        lines.append(
            "findings: "
            + ", ".join(f"{counts.get(s, 0)} {s.lower()}" for s in ("CRITICAL", "WARNING", "INFO"))
        )
    if result["summary"].get("error"):
        lines.append(f"error: {result['summary']['error']}")
    if result["findings"]:
        lines.extend(["", render_table(result["findings"], ["severity", "code", "message"])])
    return "\n".join(lines)


def _capture_status(result: Any, ns: argparse.Namespace) -> Any:
    ns.reconcile_status = result.get("status") if isinstance(result, dict) else None
    return result


def cmd_reconcile(ns: argparse.Namespace) -> int:
    """``admin reconcile``: the admin client, then the exit code from the run's status."""
    if ns.last:
        ns.admin_command = "reconcile.last"
    code = cmd_admin(ns)
    if code != EXIT_OK:
        return code
    return _EXIT_BY_STATUS.get(getattr(ns, "reconcile_status", None) or "", EXIT_FAILURE)


def add_cli(admin_subparsers: Any) -> None:
    parser = admin_parser(
        admin_subparsers,
        "reconcile",
        command="reconcile",
        help="check the books now (exit 0 clean, 2 problems, 1 could not run)",
        render=render_run,
        transform=_capture_status,
    )
    parser.add_argument("--last", action="store_true", help="show the last run instead")
    parser.set_defaults(handler=cmd_reconcile)
    add_export_cli(admin_subparsers)
