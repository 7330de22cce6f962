"""Configuration: one TOML file, ``FIBERLINKD_*`` environment overrides, secrets from files.

Every section is a frozen attrs class; values are structured through a private cattrs
converter and checked by validators. Any problem stops startup with one line naming the
key (``config: [fnn] url: not an http(s) URL: 'ftp://x'``) and exit code 2.

Secrets (the FNN bearer token, the hot-wallet key) are never in the file or argv: the file
names a path (``*_file``), or systemd's ``$CREDENTIALS_DIRECTORY`` provides them.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs

from fiberlinkd.amounts import AmountError, parse_amount

DEFAULT_CONFIG_PATH = Path("/etc/fiberlinkd/fiberlinkd.toml")

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem; ``str()`` is the one line the operator sees."""


class _FieldProblem(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def _check(predicate: Callable[[Any], bool], problem: str) -> Callable[..., None]:
    def validator(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not predicate(value):
            raise _FieldProblem(attribute.name, problem.format(value=value))

    return validator


def _positive(_i: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise _FieldProblem(attribute.name, f"must be a positive number, got {value!r}")


def _non_negative(_i: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
        raise _FieldProblem(attribute.name, f"must be zero or more, got {value!r}")


def _amount(_i: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    try:
        parse_amount(value, 18)
    except AmountError as exc:
        raise _FieldProblem(attribute.name, str(exc)) from None


def _http_url(_i: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    parsed = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise _FieldProblem(attribute.name, f"not an http(s) URL: {value!r}")


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8470"`` or ``"[::1]:8470"`` → (host, port). Errors: ``ValueError``."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ValueError(f"not HOST:PORT: {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    ipaddress.ip_address(host)  # raises ValueError for names: bind to an address
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range: {value!r}")
    return host, port


def _listen(_i: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    try:
        parse_listen(value)
    except ValueError:
        raise _FieldProblem(
            attribute.name, f"not an IP:PORT address (e.g. 127.0.0.1:8470): {value!r}"
        ) from None


@attrs.frozen
class RateLimits:
    """Requests per minute. Defaults carry a busy forum's polling without throttling it."""

    per_app_method_per_minute: int = attrs.field(default=60_000, validator=_positive)
    tip_create_per_user_per_minute: int = attrs.field(default=30, validator=_positive)
    withdrawal_request_per_user_per_minute: int = attrs.field(default=10, validator=_positive)


@attrs.frozen
class ApiConfig:
    listen: str = attrs.field(default="127.0.0.1:8470", validator=_listen)
    max_body_bytes: int = attrs.field(default=65_536, validator=_positive)
    signature_window_s: int = attrs.field(default=300, validator=_positive)
    graceful_timeout_s: float = attrs.field(default=4.0, validator=_positive)
    rate_limits: RateLimits = attrs.field(factory=RateLimits)

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


@attrs.frozen
class FnnConfig:
    url: str = attrs.field(default="http://127.0.0.1:8227", validator=_http_url)
    token_file: str = ""
    call_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    connect_timeout_s: float = attrs.field(default=3.0, validator=_positive)


@attrs.frozen
class AdminConfig:
    socket: str = "/run/fiberlinkd/admin.sock"


@attrs.frozen
class AssetsConfig:
    """CKB is always available. USDI is offered when the node lists a UDT of that name."""

    enabled: tuple[str, ...] = attrs.field(
        default=("CKB",),
        validator=_check(lambda v: set(v) <= {"CKB", "USDI"} and v, "allowed: CKB, USDI"),
    )
    usdi_decimals: int = attrs.field(default=6, validator=_non_negative)


@attrs.frozen
class TipsConfig:
    invoice_expiry_s: int = attrs.field(default=3600, validator=_positive)
    min_amount: str = attrs.field(default="0.00000001", validator=_amount)
    max_amount: str = attrs.field(default="1000000", validator=_amount)
    message_max_chars: int = attrs.field(default=280, validator=_positive)


@attrs.frozen
class SettlementConfig:
    max_concurrent_checks: int = attrs.field(default=4, validator=_positive)
    max_checks_per_s: float = attrs.field(default=50.0, validator=_positive)
    watch_ttl_s: float = attrs.field(default=5.0, validator=_positive)
    first_check_after_s: float = attrs.field(default=2.0, validator=_positive)
    # The schedule is the safety net behind the arrival signal (list_channels), so its cap
    # is long; while the signal is unavailable the poller caps it at 60 s.
    max_check_interval_s: float = attrs.field(default=300.0, validator=_positive)
    expiry_grace_s: float = attrs.field(default=300.0, validator=_non_negative)


@attrs.frozen
class WithdrawalsConfig:
    """Defaults for every app's policy (``fiberlinkd admin policy set`` overrides per app)."""

    allowed_assets: tuple[str, ...] = attrs.field(
        default=("CKB",),
        validator=_check(lambda v: set(v) <= {"CKB", "USDI"} and v, "allowed: CKB, USDI"),
    )
    min_amount: str = attrs.field(default="61", validator=_amount)
    max_per_request: str = attrs.field(default="100000", validator=_amount)
    user_daily_limit: str = attrs.field(default="200000", validator=_amount)
    app_daily_limit: str = attrs.field(default="2000000", validator=_amount)
    cooldown_s: int = attrs.field(default=0, validator=_non_negative)
    # FNN caps a payment's fee at max_fee_rate (default 5 per mille) as well; we do not send
    # max_fee_rate, so a cap above 5000 ppm would be promised to users but never used.
    max_fee_ppm: int = attrs.field(
        default=5_000,
        validator=_check(
            lambda v: isinstance(v, int) and 0 <= v <= 5_000,
            "must be from 0 to 5000 (FNN's default fee-rate cap, 0.5 %); got {value!r}",
        ),
    )
    invoice_min_remaining_s: int = attrs.field(default=600, validator=_non_negative)
    retry_budget: int = attrs.field(default=5, validator=_non_negative)
    retry_base_s: float = attrs.field(default=30.0, validator=_positive)
    payment_poll_s: float = attrs.field(default=1.0, validator=_positive)


@attrs.frozen
class ReconcilerConfig:
    interval_s: float = attrs.field(default=300.0, validator=_positive)
    max_node_calls_per_s: float = attrs.field(default=20.0, validator=_positive)
    stuck_processing_s: float = attrs.field(default=900.0, validator=_positive)
    chunk_rows: int = attrs.field(default=2_000, validator=_positive)


def _out_point(_i: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """``""`` or ``0x<64 hex>:<index>`` (a cell's out point)."""
    if value == "":
        return
    tx_hash, sep, index = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    digits = tx_hash.removeprefix("0x")
    if (
        not sep
        or not tx_hash.startswith("0x")
        or len(digits) != 64
        or any(c not in "0123456789abcdefABCDEF" for c in digits)
        or not index.isdigit()
        or int(index) >= 1 << 32
    ):
        raise _FieldProblem(attribute.name, f"not an out point 0x<tx hash>:<index>: {value!r}")


@attrs.frozen
class OnchainConfig:
    enabled: bool = False
    ckb_rpc_url: str = attrs.field(default="http://127.0.0.1:8114", validator=_http_url)
    hot_wallet_key_file: str = ""
    confirmations: int = attrs.field(default=10, validator=_non_negative)
    fee_rate_shannons_per_kb: int = attrs.field(default=1_000, validator=_positive)
    poll_s: float = attrs.field(default=5.0, validator=_positive)
    secp256k1_dep_group: str = attrs.field(default="", validator=_out_point)
    call_timeout_s: float = attrs.field(default=10.0, validator=_positive)


@attrs.frozen
class Config:
    state_dir: str = "/var/lib/fiberlinkd"
    log_level: str = attrs.field(
        default="info",
        validator=_check(
            lambda v: v in {"debug", "info", "warning", "error"},
            "must be one of debug, info, warning, error; got {value!r}",
        ),
    )
    log_format: str = attrs.field(
        default="text",
        validator=_check(lambda v: v in {"text", "json"}, "must be text or json; got {value!r}"),
    )
    api: ApiConfig = attrs.field(factory=ApiConfig)
    fnn: FnnConfig = attrs.field(factory=FnnConfig)
    admin: AdminConfig = attrs.field(factory=AdminConfig)
    assets: AssetsConfig = attrs.field(factory=AssetsConfig)
    tips: TipsConfig = attrs.field(factory=TipsConfig)
    settlement: SettlementConfig = attrs.field(factory=SettlementConfig)
    withdrawals: WithdrawalsConfig = attrs.field(factory=WithdrawalsConfig)
    reconciler: ReconcilerConfig = attrs.field(factory=ReconcilerConfig)
    onchain: OnchainConfig = attrs.field(factory=OnchainConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


for _cls in (
    RateLimits,
    ApiConfig,
    FnnConfig,
    AdminConfig,
    AssetsConfig,
    TipsConfig,
    SettlementConfig,
    WithdrawalsConfig,
    ReconcilerConfig,
    OnchainConfig,
    Config,
):
    attrs.resolve_types(_cls)

ENV_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "FIBERLINKD_STATE_DIR": ("state_dir",),
    "FIBERLINKD_API_LISTEN": ("api", "listen"),
    "FIBERLINKD_FNN_URL": ("fnn", "url"),
    "FIBERLINKD_ADMIN_SOCKET": ("admin", "socket"),
    "FIBERLINKD_LOG_LEVEL": ("log_level",),
}

_converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(tp: type[T], accepted: tuple[type, ...]) -> Callable[[Any, Any], T]:
    """TOML already has types: refuse coercions (``"false"`` → ``True``, ``1.5`` → ``1``)."""

    def hook(value: Any, _type: Any) -> T:
        if isinstance(value, bool) is not (tp is bool) or not isinstance(value, accepted):
            raise TypeError(f"expected {tp.__name__}, got {type(value).__name__}")
        return tp(value)  # type: ignore[call-arg]

    return hook


_converter.register_structure_hook(bool, _strict(bool, (bool,)))
_converter.register_structure_hook(int, _strict(int, (int,)))
_converter.register_structure_hook(float, _strict(float, (int, float)))
_converter.register_structure_hook(str, _strict(str, (str,)))


def _structure_section(cls: type[T], data: Any, where: str) -> T:
    """Structure one table, naming the first bad key as ``[section] key``."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: {where or 'top level'}: must be a table")
    fields = attrs.fields_dict(cls)  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise ConfigError(f"config: {_label(where, key)}: unknown key")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        field = fields[name]
        field_type: Any = field.type
        if attrs.has(field_type):
            kwargs[name] = _structure_section(field_type, value, _section(where, name))
            continue
        try:
            kwargs[name] = _converter.structure(value, field_type)
        except (cattrs.BaseValidationError, ValueError, TypeError):
            raise ConfigError(
                f"config: {_label(where, name)}: expected {_type_name(field.type)}, got {value!r}"
            ) from None
        if isinstance(value, bool) and field.type in ("int", "float", int, float):
            raise ConfigError(f"config: {_label(where, name)}: expected a number, got {value!r}")
    try:
        return cls(**kwargs)
    except _FieldProblem as exc:
        raise ConfigError(f"config: {_label(where, exc.key)}: {exc.problem}") from None


def _section(where: str, name: str) -> str:
    return f"{where[:-1]}.{name}]" if where else f"[{name}]"


def _label(where: str, key: str) -> str:
    return f"{where} {key}" if where else key


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(tp, "a list of strings" if tp == tuple[str, ...] else str(tp))


def load_config(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or the default file if it exists), apply env overrides, validate.

    ``path=None`` means "the default path if present, else built-in defaults".
    Errors: :class:`ConfigError` with the one line to print.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = path if path is not None else DEFAULT_CONFIG_PATH
    if path is not None or DEFAULT_CONFIG_PATH.exists():
        try:
            with source.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {source}") from None
        except PermissionError:
            raise ConfigError(f"config: cannot read {source}: permission denied") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {source}: not valid TOML: {exc}") from None
    for variable, keys in ENV_OVERRIDES.items():
        if variable in environ:
            table = data
            for key in keys[:-1]:
                table = table.setdefault(key, {})
                if not isinstance(table, dict):
                    raise ConfigError(f"config: [{key}]: must be a table")
            table[keys[-1]] = environ[variable]
    return _structure_section(Config, data, "")


def read_secret(
    path_setting: str, credential_name: str, *, environ: Mapping[str, str]
) -> str | None:
    """A secret from the configured file, else from ``$CREDENTIALS_DIRECTORY/<name>``.

    Returns ``None`` when neither is set. Errors: :class:`ConfigError` naming the file.
    """
    candidates: list[Path] = []
    if path_setting:
        candidates.append(Path(path_setting))
    elif "CREDENTIALS_DIRECTORY" in environ:
        credential = Path(environ["CREDENTIALS_DIRECTORY"]) / credential_name
        if credential.exists():
            candidates.append(credential)
    for candidate in candidates:
        try:
            value = candidate.read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"config: cannot read secret file {candidate}: {exc.strerror}"
            ) from None
        if not value:
            raise ConfigError(f"config: secret file {candidate} is empty")
        return value
    return None


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, for ``check-config``. Holds no secrets:
    only the *paths* of secret files, which are safe to show."""
    return _converter.unstructure(config)  # type: ignore[no-any-return]
