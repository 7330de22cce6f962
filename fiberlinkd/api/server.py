"""The API actor: serves the quart-trio app with hypercorn's trio worker in our nursery."""

from __future__ import annotations

import logging

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from fiberlinkd.api.app import create_app
from fiberlinkd.logsetup import kv
from fiberlinkd.runtime import Runtime

log = logging.getLogger(__name__)


@attrs.define
class ApiServer:
    rt: Runtime
    stop_accepting: trio.Event
    bound: list[str] = attrs.field(factory=list)

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``stop_accepting`` is set, then drain in-flight requests and return.

        hypercorn's ``serve`` returns once its shutdown trigger fires and requests drain.
        """
        host, port = self.rt.config.api.host_port
        config = HypercornConfig()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.graceful_timeout = self.rt.config.api.graceful_timeout_s
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        # Idle keep-alive connections hold up hypercorn's drain; close them early.
        config.keep_alive_timeout = 5
        app = create_app(self.rt)

        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                lambda task_status: serve(
                    app, config, shutdown_trigger=self.stop_accepting.wait, task_status=task_status
                )
            )
            self.bound[:] = binds
            self.rt.api_urls[:] = binds
            log.info("api listening", extra=kv(urls=",".join(binds)))
            task_status.started(binds)
