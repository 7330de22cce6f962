"""A faithful loopback FNN node for tests, the demo and ``fiberlinkd devnode``.

In-process::

    async with open_simulator(network="Fibd", host="127.0.0.1", port=0) as sim:
        client = FnnClient(http, sim.url)
        ...
        sim.node.pay_invoice(invoice)            # a remote payer pays our invoice
        sim.node.add_fault("send_payment", "drop_reply")
        sim.node.successful_payments()

Standalone: ``fiberlinkd devnode --listen 127.0.0.1:0 --network Fibd [--state PATH]`` prints
``devnode listening on http://HOST:PORT/`` and serves until SIGINT/SIGTERM.

FNN methods simulated (``fnn-rpc.md`` §10): node_info, new_invoice, parse_invoice,
get_invoice, cancel_invoice, settle_invoice, send_payment, get_payment, list_payments,
list_channels, list_peers. Control methods on the same endpoint (``sim_`` prefix):

- ``sim_pay_invoice {invoice, amount?}`` — a remote payer pays one of our invoices;
- ``sim_remote_invoice {amount, currency?, expiry?, udt_type_script?, description?,
  payee?}`` → ``{"invoice", "payment_hash"}`` — an invoice our node can pay;
- ``sim_fault {method, kind, count?, message?, failed_error?}`` — kinds ``timeout``,
  ``http_500``, ``bad_json``, ``node_error``, ``drop_reply``, ``payment_fails``;
- ``sim_set_liquidity {outbound, inbound?}`` — our spendable capacity (int or hex);
- ``sim_list_successful_payments {}`` → ``{"payments": [{payment_hash, amount, fee, at}]}``;
- ``sim_advance_time {seconds}`` — move the node clock (expiry, payment progress).

Integers in ``sim_*`` params may be JSON numbers or FNN hex strings.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from .sim.node import RpcError, SimNode
from .sim.server import RpcServer

__all__ = ["RpcError", "SimNode", "Simulator", "add_cli", "open_simulator"]

NETWORK_ALIASES = {
    "fibb": "Fibb",
    "mainnet": "Fibb",
    "fibt": "Fibt",
    "testnet": "Fibt",
    "fibd": "Fibd",
    "dev": "Fibd",
    "devnet": "Fibd",
}


@attrs.frozen
class Simulator:
    """A running simulator: its base ``url`` and the in-memory ``node``."""

    url: str
    node: SimNode
    host: str
    port: int


@asynccontextmanager
async def open_simulator(
    network: str = "Fibd",
    host: str = "127.0.0.1",
    port: int = 0,
    state_path: str | Path | None = None,
    *,
    auth_token: str | None = None,
    inflight_delay_s: float = 0.05,
    settle_delay_s: float = 0.15,
) -> AsyncIterator[Simulator]:
    """Serve a simulated FNN node on ``host:port`` (0 picks a free port) for the block.

    ``state_path``: load the node's state from this JSON file if it exists and write it
    back (atomically) after every change. ``auth_token``: if set, every call needs
    ``Authorization: Bearer <auth_token>`` (else ``-32999 Unauthorized``).
    ``inflight_delay_s`` / ``settle_delay_s``: after ``send_payment`` a session becomes
    ``Inflight`` and then resolves at these offsets.

    Cancellation: leaving the block stops the server and drops open connections.
    """
    node = SimNode(
        network,
        state_path=None if state_path is None else Path(state_path),
        inflight_delay_s=inflight_delay_s,
        settle_delay_s=settle_delay_s,
    )
    server = RpcServer(node, auth_token=auth_token)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, server.handle_connection, listeners)
        try:
            yield Simulator(
                url=f"http://{url_host}:{bound_port}/", node=node, host=bound_host, port=bound_port
            )
        finally:
            nursery.cancel_scope.cancel()


# --- CLI --------------------------------------------------------------------------------


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parse_network(text: str) -> str:
    network = NETWORK_ALIASES.get(text.lower())
    if network is None:
        raise argparse.ArgumentTypeError(f"network must be Fibb, Fibt or Fibd, got {text!r}")
    return network


def add_cli(subparsers: Any) -> None:
    """Register ``fiberlinkd devnode``."""
    parser = subparsers.add_parser(
        "devnode", help="run the FNN simulator (a loopback Fiber node for tests and demos)"
    )
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 8227),
        metavar="HOST:PORT",
        help="address to serve JSON-RPC on (default 127.0.0.1:8227; port 0 picks one)",
    )
    parser.add_argument(
        "--network",
        type=_parse_network,
        default="Fibd",
        help="Fibb (mainnet), Fibt (testnet) or Fibd (dev; default)",
    )
    parser.add_argument(
        "--state", type=Path, default=None, metavar="PATH", help="persist node state here"
    )
    parser.set_defaults(handler=_cmd_devnode)


async def serve_devnode(
    network: str,
    host: str,
    port: int,
    state_path: Path | None,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the simulator until SIGINT/SIGTERM; prints the bound URL once serving."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_simulator(network, host, port, state_path) as sim:
            print(f"devnode listening on {sim.url}", flush=True)
            task_status.started(sim.url)
            async for _ in signals:
                break


def _cmd_devnode(args: argparse.Namespace) -> int:
    host, port = args.listen
    try:
        trio.run(serve_devnode, args.network, host, port, args.state)
    except (OSError, ValueError) as exc:
        print(f"devnode: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fiberlinkd.fnn.simulator [devnode options]``: the same as ``devnode``."""
    parser = argparse.ArgumentParser(prog="python -m fiberlinkd.fnn.simulator")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["devnode", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.handler(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
