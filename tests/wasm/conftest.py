"""Fixtures of the wasm tier: the real FNN 0.8.1 node (WebAssembly, headless Chromium).

* ``real_node`` (session): starts the node once per session (``realnode.run_real_node``) and
  yields it; ``real_node.url`` is a loopback FNN JSON-RPC endpoint. When Debian's
  ``chromium`` or the unpacked npm package is missing, every ``wasm`` test is skipped and
  the skips are reported at one location, so ``-ra`` prints a single line naming
  ``.ci/install-wasm-node``.
* ``real_runs`` (session): answers of the real node per script name, so each script is played
  against the one node exactly once (scripts are not idempotent: invoices stay created).
* ``http``: an ``httpx.AsyncClient`` for the test's trio run.

Tests that need Chromium are marked ``@pytest.mark.wasm``; tests that do not (translation,
comparator, golden-vs-simulator) always run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import httpx
import pytest

from .realnode import RealNode, missing_prerequisite, run_real_node

_SKIP_REASON = missing_prerequisite()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Report every wasm-tier skip at this file, so the summary folds them into one line."""
    report = yield
    if (
        _SKIP_REASON is not None
        and report.skipped
        and isinstance(report.longrepr, tuple)
        and str(report.longrepr[2]).endswith(_SKIP_REASON)
    ):
        report.longrepr = (__file__, 1, _SKIP_REASON)
    return report


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    if _SKIP_REASON is not None:
        pytest.skip(_SKIP_REASON)
    with run_real_node() as node:
        yield node


@pytest.fixture(scope="session")
def real_runs() -> dict[str, dict[str, dict[str, Any]]]:
    return {}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client
