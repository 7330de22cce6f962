"""The hot wallet key: from a file or the systemd credential, never shown, never exposed.

Rules under test:
- a key file group or others can access is refused with a message naming chmod 600;
- without a file setting, ``$CREDENTIALS_DIRECTORY/hot-wallet-key`` is used;
- no key at all, or a file that is not a 32-byte hex key, is one clear ConfigError that
  never contains the file's content;
- the wallet's repr/str show the lock args, never the key.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fiberlinkd.ckb.address import decode_address
from fiberlinkd.config import ConfigError, OnchainConfig
from fiberlinkd.onchain.wallet import load_hot_wallet
from tests.test_onchain_support import KEY_HEX, WALLET


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_private_key_file_loads_the_wallet(tmp_path: Path) -> None:
    path = _write(tmp_path / "key", f"  {KEY_HEX}\n")
    wallet = load_hot_wallet(OnchainConfig(hot_wallet_key_file=str(path)), {})
    assert wallet.lock == WALLET.lock
    assert decode_address(wallet.address("testnet")).script == WALLET.lock


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666, 0o610])
def test_a_key_file_accessible_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "key", KEY_HEX, mode)
    with pytest.raises(ConfigError) as refused:
        load_hot_wallet(OnchainConfig(hot_wallet_key_file=str(path)), {})
    message = str(refused.value)
    assert message.startswith("config: [onchain] hot_wallet_key_file:")
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message


def test_the_systemd_credential_is_used_when_no_file_is_configured(tmp_path: Path) -> None:
    _write(tmp_path / "hot-wallet-key", KEY_HEX, 0o400)
    wallet = load_hot_wallet(OnchainConfig(), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert wallet.lock == WALLET.lock


def test_no_key_anywhere_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="no hot wallet key"):
        load_hot_wallet(OnchainConfig(), {})


@pytest.mark.parametrize(
    "content", ["0x1234", "zz" * 32, "00" * 32, "ff" * 32, "secret words here"]
)
def test_a_malformed_key_is_refused_without_echoing_it(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path / "key", content)
    with pytest.raises(ConfigError, match="does not hold a private key") as refused:
        load_hot_wallet(OnchainConfig(hot_wallet_key_file=str(path)), {})
    assert content not in str(refused.value)


def test_the_wallet_never_shows_its_key() -> None:
    secret = KEY_HEX.removeprefix("0x")
    for text in (repr(WALLET), str(WALLET), f"{WALLET}"):
        assert secret not in text
        assert secret[:16] not in text
        assert "lock_args=0x" in text
