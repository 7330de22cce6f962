"""Token-bucket rate limits, in memory, per key (app+method, and app+method+user).

Sized so that a busy forum's normal polling (1 ``tip.status``/s from each of 200 open tip
modals, one ``dashboard.summary`` per 10 s from each of 500 dashboards) never hits them.
Memory is bounded: idle buckets are dropped once full again.
"""

from __future__ import annotations

import attrs

MAX_BUCKETS = 100_000


@attrs.define
class _Bucket:
    tokens: float
    updated_s: float


@attrs.frozen
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again


@attrs.define
class RateLimiter:
    _buckets: dict[tuple[str, ...], _Bucket] = attrs.field(factory=dict)

    def check(self, key: tuple[str, ...], per_minute: int, now_s: float) -> Decision:
        """Take one token from ``key``'s bucket (capacity ``per_minute``, refill per minute)."""
        rate = per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._evict_full(now_s, rate)
            bucket = self._buckets[key] = _Bucket(float(per_minute), now_s)
        else:
            bucket.tokens = min(per_minute, bucket.tokens + (now_s - bucket.updated_s) * rate)
            bucket.updated_s = now_s
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        reset = int((per_minute - bucket.tokens) / rate) + 1 if rate > 0 else 60
        return Decision(allowed, per_minute, int(bucket.tokens), reset)

    def _evict_full(self, now_s: float, rate: float) -> None:
        for key in list(self._buckets)[: MAX_BUCKETS // 10]:
            del self._buckets[key]
