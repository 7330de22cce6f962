"""The payouts kill switch shared by the admin commands, the executor and the reconciler.

Rules under test: payouts run until frozen; a freeze needs a reason and records who and
since when; re-freezing replaces the reason but keeps the start; unfreezing reports whether
it was frozen; a hand-edited row still freezes (fail safe); the
``fiberlinkd_payouts_frozen`` gauge follows the switch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from fiberlinkd.ledger import open_ledger
from fiberlinkd.ledger.admin import put_setting
from fiberlinkd.payouts import (
    PAYOUTS_FROZEN_KEY,
    FrozenState,
    clear_frozen,
    frozen_state,
    is_frozen,
    set_frozen,
)


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("fiberlinkd_payouts_frozen")


async def test_freeze_records_reason_who_and_since_and_unfreeze_lifts_it(tmp_path: Path) -> None:
    async with open_ledger(tmp_path, inline=True) as ledger:
        assert await ledger.read(is_frozen) == (False, None)
        assert _gauge() == 0
        state = await ledger.transact(set_frozen, "  balance mismatch  ", 1_000, "reconciler")
        assert state == FrozenState(reason="balance mismatch", by="reconciler", since_ms=1_000)
        assert await ledger.read(is_frozen) == (True, "balance mismatch")
        assert _gauge() == 1
        again = await ledger.transact(set_frozen, "still investigating", 5_000, "uid 0 (root)")
        assert again == FrozenState("still investigating", "uid 0 (root)", since_ms=1_000)
        assert await ledger.transact(clear_frozen, 9_000) is True
        assert await ledger.read(frozen_state) is None
        assert _gauge() == 0
        assert await ledger.transact(clear_frozen, 9_500) is False


async def test_a_freeze_without_a_reason_is_refused(tmp_path: Path) -> None:
    async with open_ledger(tmp_path, inline=True) as ledger:
        with pytest.raises(ValueError, match="needs a reason"):
            await ledger.transact(set_frozen, "   ", 1, "x")
        assert await ledger.read(is_frozen) == (False, None)


async def test_a_hand_edited_switch_row_still_freezes(tmp_path: Path) -> None:
    async with open_ledger(tmp_path, inline=True) as ledger:
        await ledger.transact(put_setting, PAYOUTS_FROZEN_KEY, "ops said so", 77)
        assert await ledger.read(is_frozen) == (True, "ops said so")
        assert await ledger.read(frozen_state) == FrozenState("ops said so", "unknown", 77)
