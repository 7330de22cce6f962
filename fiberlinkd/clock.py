"""Wall-clock time in one place, so fake-clock tests can drive timestamps too.

Rows store unix milliseconds. Production uses :class:`WallClock`; tests pass a
:class:`TrioClock`, which follows trio's (possibly fake) clock from a fixed epoch, so
``next_check_at`` and expiry move exactly with ``MockClock``.
"""

from __future__ import annotations

import calendar
import time
from typing import Protocol

import attrs
import trio


class Clock(Protocol):
    def now_ms(self) -> int: ...


@attrs.frozen
class WallClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@attrs.frozen
class TrioClock:
    """Unix ms = ``epoch_ms`` + trio's current time. Call only inside ``trio.run``."""

    epoch_ms: int = 1_800_000_000_000

    def now_ms(self) -> int:
        return self.epoch_ms + int(trio.current_time() * 1000)


def iso_ms(unix_ms: int) -> str:
    """``2026-12-04T16:00:00.123Z``: ISO-8601 UTC with milliseconds, as the plugin expects."""
    seconds, millis = divmod(unix_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def parse_iso_ms(text: str) -> int:
    """Inverse of :func:`iso_ms` (exactly that format). Errors: ``ValueError``."""
    if len(text) != 24 or text[19] != "." or not text.endswith("Z"):
        raise ValueError(f"not an ISO-8601 UTC timestamp with milliseconds: {text[:40]!r}")
    base = time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    millis = text[20:23]
    if not millis.isdigit():
        raise ValueError(f"not an ISO-8601 UTC timestamp with milliseconds: {text[:40]!r}")
    return calendar.timegm(base) * 1000 + int(millis)
