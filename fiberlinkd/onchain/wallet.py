"""The hot wallet: one secp256k1 key whose standard lock holds the CKB that pays on-chain
withdrawals.

The key comes from ``[onchain] hot_wallet_key_file`` or, when that is empty, the systemd
credential ``hot-wallet-key`` (``$CREDENTIALS_DIRECTORY/hot-wallet-key``); never from the
command line or the config file itself. The file holds the 32-byte key as hex (an optional
``0x``; surrounding whitespace ignored). A key file that group or others may read or write is
refused: ``chmod 600`` it (systemd credentials are private to the service by construction).

The key never appears in a log line, an exception message or a ``repr``.

Errors: :class:`fiberlinkd.config.ConfigError` with one line naming the problem (the daemon
exits 2 on it).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import attrs
import coincurve

from fiberlinkd.ckb.address import Script, encode_address, hex_bytes
from fiberlinkd.ckb.tx import SignedTx, UnsignedTx, lock_for_key, sign_payout
from fiberlinkd.config import ConfigError, OnchainConfig, read_secret

HOT_WALLET_CREDENTIAL = "hot-wallet-key"
PRIVATE_KEY_BYTES = 32
_KEY_SETTING = "config: [onchain] hot_wallet_key_file"


def key_path(config: OnchainConfig, environ: Mapping[str, str]) -> Path | None:
    """Where the key is read from: the configured file, else the systemd credential."""
    if config.hot_wallet_key_file:
        return Path(config.hot_wallet_key_file)
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        credential = Path(directory) / HOT_WALLET_CREDENTIAL
        if credential.exists():
            return credential
    return None


def check_key_file_permissions(path: Path) -> None:
    """Refuse a key file group or others can read or write. Errors: ConfigError."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{_KEY_SETTING}: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{_KEY_SETTING}: cannot stat {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{_KEY_SETTING}: {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{_KEY_SETTING}: {path} is accessible to group/others "
            f"(mode {stat.S_IMODE(mode):04o}); the hot wallet key must be private: "
            f"chmod 600 {path}"
        )


def parse_private_key(text: str) -> bytes:
    """32 bytes from hex. Errors: ``ValueError`` whose message never contains the text."""
    digits = text.strip().removeprefix("0x").removeprefix("0X")
    if len(digits) != 2 * PRIVATE_KEY_BYTES:
        raise ValueError(f"expected {2 * PRIVATE_KEY_BYTES} hex digits, got {len(digits)}")
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        raise ValueError("not hex") from None
    try:
        coincurve.PrivateKey(key)
    except ValueError:
        raise ValueError("not a valid secp256k1 private key") from None
    return key


@attrs.frozen(repr=False)
class HotWallet:
    """The key and its secp256k1-blake160 lock. ``repr`` shows the lock args only."""

    _key: bytes = attrs.field(repr=False)
    lock: Script

    @classmethod
    def from_private_key(cls, key: bytes) -> HotWallet:
        return cls(key, lock_for_key(key))

    def __repr__(self) -> str:
        return f"HotWallet(lock_args={hex_bytes(self.lock.args)})"

    __str__ = __repr__

    def address(self, network: str) -> str:
        return encode_address(self.lock, network)

    def sign(self, unsigned: UnsignedTx) -> SignedTx:
        return sign_payout(unsigned, self._key)


def load_hot_wallet(config: OnchainConfig, environ: Mapping[str, str]) -> HotWallet:
    """Read, check and parse the hot wallet key. Errors: ConfigError (one line)."""
    path = key_path(config, environ)
    if path is None:
        raise ConfigError(
            f"{_KEY_SETTING}: [onchain] is enabled but there is no hot wallet key: set "
            f"hot_wallet_key_file or give the service the systemd credential "
            f"{HOT_WALLET_CREDENTIAL}"
        )
    if config.hot_wallet_key_file:
        check_key_file_permissions(path)
    text = read_secret(str(path), HOT_WALLET_CREDENTIAL, environ=environ)
    if text is None:
        raise ConfigError(f"{_KEY_SETTING}: {path} holds no key")
    try:
        key = parse_private_key(text)
    except ValueError as exc:
        raise ConfigError(f"{_KEY_SETTING}: {path} does not hold a private key ({exc})") from None
    return HotWallet.from_private_key(key)
