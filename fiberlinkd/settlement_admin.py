"""``fiberlinkd admin backfill`` and the ``settlement`` section of ``fiberlinkd admin status``.

Backfill re-checks every tip created in a window against the node and settles those the
node reports ``Paid`` that the ledger missed (UNPAID ones, and FAILED ones as a late
settlement: received money is never dropped). It is safe to re-run: crediting is
idempotent by ``settlement:tip_intent:<id>``, so a replay changes nothing. Its
``get_invoice`` calls come on top of the poller's, bounded by ``--rate`` (default
:data:`DEFAULT_CALLS_PER_S`, at most ``[settlement] max_checks_per_s``).

Times on the command line: ISO 8601 (``2026-03-01``, ``2026-03-01T12:00:00Z``; no zone
means UTC) or unix seconds (``1772366400``). Over the socket they travel as unix ms
(``since_ms``, ``until_ms``); the window is ``[since, until)`` on the tips' creation time.

The status section shows the unpaid backlog, how far the schedule is behind, and the
poller's recent detection latency (p50/p95) once the daemon exposes the running poller as
``rt.settlement_stats``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
from typing import Any

import prometheus_client

from fiberlinkd.admin.cli import CliError, admin_parser, render_table
from fiberlinkd.admin.protocol import FORBIDDEN, AdminError, bad_request
from fiberlinkd.admin.registry import (
    APP_ARG,
    CommandContext,
    Scope,
    admin_command,
    arg_opt_str,
    register_status_section,
)
from fiberlinkd.clock import iso_ms
from fiberlinkd.ledger import tips as tipsql
from fiberlinkd.runtime import Runtime
from fiberlinkd.settlement import DETECTION, backfill

DEFAULT_CALLS_PER_S = 20
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_UNIX_SECONDS = re.compile(r"\d{1,12}(\.\d{1,3})?")

BACKFILLS = prometheus_client.Counter(
    "fiberlinkd_settlement_backfills_total", "Backfill runs started from the admin socket"
)


def parse_time_ms(text: str) -> int:
    """``--since``/``--until``: ISO 8601 (UTC unless a zone is given) or unix seconds.

    Errors: ``ValueError`` naming the accepted forms.
    """
    text = text.strip()
    if _UNIX_SECONDS.fullmatch(text):
        return round(float(text) * 1000)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a time: {text[:40]!r} (use ISO 8601 such as 2026-03-01T12:00:00Z, "
            "or unix seconds)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return round(moment.timestamp() * 1000)


def _arg_time(args: dict[str, Any], name: str, default: int) -> int:
    value = args.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIME_MS:
        raise bad_request(f"argument {name!r} must be unix milliseconds (an integer >= 0)")
    return value


@admin_command("backfill", mutates=True, scope=Scope.APP)
async def backfill_command(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Re-check tips created in a window against the node; settle what was paid and missed."""
    app_id = arg_opt_str(args, APP_ARG, max_chars=64)
    if app_id is None and not ctx.caller.is_super:
        raise AdminError(
            FORBIDDEN,
            "backfill without --app covers every app and needs SUPER_ADMIN; "
            "pass --app ID for an app you administer",
        )
    now = ctx.now_ms()
    since_ms = _arg_time(args, "since_ms", 0)
    until_ms = _arg_time(args, "until_ms", now + 1)
    if since_ms >= until_ms:
        raise bad_request(
            f"the window is empty: --since {iso_ms(since_ms)} is not before --until "
            f"{iso_ms(until_ms)}"
        )
    limit = max(1, math.floor(ctx.rt.config.settlement.max_checks_per_s))
    calls_per_s = args.get("calls_per_s", min(DEFAULT_CALLS_PER_S, limit))
    if isinstance(calls_per_s, bool) or not isinstance(calls_per_s, int | float):
        raise bad_request("argument 'calls_per_s' must be a number")
    if not 0 < calls_per_s <= limit:
        raise bad_request(
            f"argument 'calls_per_s' must be above 0 and at most {limit} "
            "([settlement] max_checks_per_s)"
        )
    BACKFILLS.inc()
    summary = await backfill(
        ctx.rt,
        app_id=app_id,
        since_ms=since_ms,
        until_ms=until_ms,
        calls_per_s=float(calls_per_s),
        on_progress=ctx.progress,
    )
    return {
        "ok": summary["errors"] == 0,
        "app_id": app_id,
        "since": iso_ms(since_ms),
        "until": iso_ms(until_ms),
        "calls_per_s": calls_per_s,
        **summary,
    }


# --- the status section -------------------------------------------------------------------


def _histogram_count() -> int:
    for metric in DETECTION.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return int(sample.value)
    return 0


async def settlement_status(rt: Runtime) -> dict[str, Any]:
    """Backlog, schedule lag and detection latency, for ``fiberlinkd admin status``."""
    now = rt.clock.now_ms()
    backlog = await rt.ledger.read(tipsql.unpaid_backlog)
    next_due = await rt.ledger.read(tipsql.next_due_at)
    # The running poller, once daemon wiring exposes it (see the module docstring).
    stats = getattr(rt, "settlement_stats", None)
    latency: dict[str, Any] = {"p50_s": None, "p95_s": None}
    if stats is not None:
        recent = stats.latency_percentiles()
        latency = {"p50_s": recent.get("p50"), "p95_s": recent.get("p95")}
    return {
        "unpaid_backlog": backlog,
        "schedule_behind_s": round(max(0, now - next_due) / 1000, 1) if next_due else 0.0,
        "watched_now": len(rt.watch_list.active(now)),
        "detection_latency": {
            **latency,
            "settled_since_start": _histogram_count(),
        },
    }


register_status_section("settlement", settlement_status)


# --- CLI ----------------------------------------------------------------------------------


def _time_option(ns: argparse.Namespace, name: str) -> int | None:
    text = getattr(ns, name)
    if text is None:
        return None
    try:
        return parse_time_ms(text)
    except ValueError as exc:
        raise CliError(f"--{name}: {exc}", exit_code=2) from None


def _backfill_args(ns: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {APP_ARG: ns.app}
    since, until = _time_option(ns, "since"), _time_option(ns, "until")
    if since is not None:
        args["since_ms"] = since
    if until is not None:
        args["until_ms"] = until
    if ns.rate is not None:
        if ns.rate <= 0:
            raise CliError("--rate must be above 0", exit_code=2)
        args["calls_per_s"] = ns.rate
    return args


def render_backfill(result: dict[str, Any], _ns: argparse.Namespace) -> str:
    scope = f"app {result['app_id']}" if result["app_id"] else "every app"
    lines = [
        f"backfill of {scope}, tips created {result['since']} .. {result['until']}:",
        f"  examined {result['examined']} tips ({result['already_settled']} already settled), "
        f"asked the node about {result['checked']}",
        f"  settled {result['settled']} missed payments, {result['late_settled']} late "
        f"(were FAILED), {result['unchanged']} unchanged",
        f"  node did not know {result['missing_on_node']}, errors {result['errors']}",
    ]
    changes = result.get("changes") or []
    if changes:
        lines += ["", render_table(changes, ["tip_id", "app_id", "from", "to"])]
        more = result["settled"] + result["late_settled"] - len(changes)
        if more > 0:
            lines.append(f"... and {more} more (see the tips' timelines)")
    if not result["ok"]:
        lines.append("Some checks failed: re-run the backfill once the node answers again.")
    return "\n".join(lines)


def add_cli(admin_subparsers: Any) -> None:
    parser = admin_parser(
        admin_subparsers,
        "backfill",
        command="backfill",
        help="re-check tips against the node and settle payments that were missed",
        args=_backfill_args,
        render=render_backfill,
    )
    parser.add_argument("--app", default=None, metavar="ID", help="only this app's tips")
    parser.add_argument(
        "--since", default=None, metavar="T", help="tips created at or after T (ISO or unix s)"
    )
    parser.add_argument(
        "--until", default=None, metavar="T", help="tips created before T (default: now)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="N",
        help=f"get_invoice calls per second (default {DEFAULT_CALLS_PER_S}, at most "
        "[settlement] max_checks_per_s)",
    )
