"""Per-app withdrawal policy: what a forum allows its users to withdraw, and how fast.

A policy is stored as JSON in ``withdrawal_policies`` (one row per app). Keys missing from
the row, and apps without a row, take the defaults from ``[withdrawals]`` in the config.
Limits are decimal strings in *asset units* and apply to each asset alike (the reference
did the same); they are converted to an asset's base units only when checked:
minimums round up, maximums round down, so a limit never lets through more than it says.

This module is pure (no SQL, no I/O). The checks themselves run inside the write
transaction that creates the withdrawal (:func:`fiberlinkd.ledger.withdrawals.create_withdrawal`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from fiberlinkd.amounts import AmountError, format_amount, parse_amount
from fiberlinkd.config import WithdrawalsConfig

KNOWN_ASSETS = ("CKB", "USDI")
_LIMIT_DECIMALS = 18  # limits may carry up to 18 decimals; assets have fewer
MAX_COOLDOWN_S = 7 * 24 * 3600


class PolicyError(ValueError):
    """A policy value is invalid; ``str()`` names the field and the problem."""


@attrs.frozen
class Limits:
    """A policy resolved for one asset, in that asset's base units."""

    asset_allowed: bool
    min_amount: int
    max_per_request: int
    user_daily_limit: int
    app_daily_limit: int
    cooldown_ms: int


def _canonical(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{name} must be a decimal string, got {value!r}")
    try:
        units = parse_amount(value.strip(), _LIMIT_DECIMALS)
    except AmountError as exc:
        raise PolicyError(f"{name}: {exc}") from None
    return format_amount(units, _LIMIT_DECIMALS)


def fine_units(text: str) -> int:
    """A canonical limit string in 10^-18 units, for comparing limits."""
    return parse_amount(text, _LIMIT_DECIMALS)


def _to_base(text: str, decimals: int, *, round_up: bool) -> int:
    fine = parse_amount(text, _LIMIT_DECIMALS)
    scale: int = 10 ** (_LIMIT_DECIMALS - decimals)
    whole, rest = divmod(fine, scale)
    return whole + 1 if round_up and rest else whole


@attrs.frozen
class Policy:
    allowed_assets: tuple[str, ...]
    min_amount: str
    max_per_request: str
    user_daily_limit: str
    app_daily_limit: str
    cooldown_s: int

    @classmethod
    def defaults(cls, config: WithdrawalsConfig) -> Policy:
        return cls.build(
            {
                "allowed_assets": list(config.allowed_assets),
                "min_amount": config.min_amount,
                "max_per_request": config.max_per_request,
                "user_daily_limit": config.user_daily_limit,
                "app_daily_limit": config.app_daily_limit,
                "cooldown_s": config.cooldown_s,
            }
        )

    @classmethod
    def build(cls, data: Mapping[str, Any]) -> Policy:
        """Validate and canonicalise a complete policy. Errors: :class:`PolicyError`."""
        assets = data.get("allowed_assets")
        if isinstance(assets, str):
            assets = [part for part in assets.split(",") if part.strip()]
        if not isinstance(assets, list | tuple) or not all(isinstance(a, str) for a in assets):
            raise PolicyError("allowed_assets must be a list of asset names")
        normalized: list[str] = []
        for asset in assets:
            name = asset.strip().upper()
            if name not in KNOWN_ASSETS:
                raise PolicyError(f"allowed_assets: unknown asset {asset!r} (known: CKB, USDI)")
            if name not in normalized:
                normalized.append(name)
        cooldown = data.get("cooldown_s")
        if isinstance(cooldown, bool) or not isinstance(cooldown, int):
            raise PolicyError(f"cooldown_s must be an integer, got {cooldown!r}")
        if not 0 <= cooldown <= MAX_COOLDOWN_S:
            raise PolicyError(f"cooldown_s must be between 0 and {MAX_COOLDOWN_S}")
        policy = cls(
            allowed_assets=tuple(normalized),
            min_amount=_canonical(data.get("min_amount"), "min_amount"),
            max_per_request=_canonical(data.get("max_per_request"), "max_per_request"),
            user_daily_limit=_canonical(data.get("user_daily_limit"), "user_daily_limit"),
            app_daily_limit=_canonical(data.get("app_daily_limit"), "app_daily_limit"),
            cooldown_s=cooldown,
        )
        if fine_units(policy.max_per_request) <= 0:
            raise PolicyError("max_per_request must be greater than zero")
        return policy

    def check_order(self) -> None:
        """The limits nest: min ≤ per request ≤ user daily ≤ app daily (checked on ``set``;
        a config or row that does not nest still works, the tightest limit wins)."""
        fine = fine_units
        if fine(self.min_amount) > fine(self.max_per_request):
            raise PolicyError("min_amount must not exceed max_per_request")
        if fine(self.max_per_request) > fine(self.user_daily_limit):
            raise PolicyError("max_per_request must not exceed user_daily_limit")
        if fine(self.user_daily_limit) > fine(self.app_daily_limit):
            raise PolicyError("user_daily_limit must not exceed app_daily_limit")

    @classmethod
    def from_json(cls, text: str | None, defaults: Policy) -> Policy:
        """The stored policy with missing keys from ``defaults``.

        Errors: :class:`PolicyError` for a stored row that does not validate (a hand edit);
        the request is then refused rather than run under a guessed policy.
        """
        if text is None:
            return defaults
        try:
            data = json.loads(text)
        except ValueError:
            raise PolicyError("the stored withdrawal policy is not valid JSON") from None
        if not isinstance(data, dict):
            raise PolicyError("the stored withdrawal policy is not a JSON object")
        merged = defaults.as_dict()
        merged.update({k: v for k, v in data.items() if k in merged})
        return cls.build(merged)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed_assets": list(self.allowed_assets),
            "min_amount": self.min_amount,
            "max_per_request": self.max_per_request,
            "user_daily_limit": self.user_daily_limit,
            "app_daily_limit": self.app_daily_limit,
            "cooldown_s": self.cooldown_s,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def updated(self, changes: Mapping[str, Any]) -> Policy:
        """A new policy with ``changes`` (``None`` values ignored). Errors: PolicyError."""
        merged = self.as_dict()
        for key, value in changes.items():
            if key not in merged:
                raise PolicyError(f"unknown policy field {key!r}")
            if value is not None:
                merged[key] = value
        policy = Policy.build(merged)
        policy.check_order()
        return policy

    def limits_for(self, asset: str, decimals: int) -> Limits:
        return Limits(
            asset_allowed=asset in self.allowed_assets,
            min_amount=_to_base(self.min_amount, decimals, round_up=True),
            max_per_request=_to_base(self.max_per_request, decimals, round_up=False),
            user_daily_limit=_to_base(self.user_daily_limit, decimals, round_up=False),
            app_daily_limit=_to_base(self.app_daily_limit, decimals, round_up=False),
            cooldown_ms=self.cooldown_s * 1000,
        )
