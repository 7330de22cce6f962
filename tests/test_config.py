"""Configuration: one TOML file, ``FIBERLINKD_*`` overrides, secrets only from files.

Rules under test:
- no file means the built-in defaults; the shipped example (config/fiberlinkd.toml) names
  every key with exactly its default and validates;
- each environment override replaces exactly its key, over the file;
- a bad value of each kind (type, range, URL, listen address, amount, choice, unknown key,
  broken TOML, missing file) stops ``fiberlinkd check-config`` with exit 2 and exactly one
  stderr line that names the key;
- TOML types are not coerced: ``enabled = "false"`` is an error, not ``True``;
- secrets come from a ``*_file`` path or ``$CREDENTIALS_DIRECTORY``, and never appear in
  ``check-config`` output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from fiberlinkd.config import (
    ENV_OVERRIDES,
    Config,
    ConfigError,
    load_config,
    read_secret,
    redacted,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "fiberlinkd.toml"


def write(tmp_path: Path, text: str, name: str = "fiberlinkd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ=environ or {})


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIBERLINKD_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fiberlinkd", *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=60,
        check=False,
    )


def all_keys(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = []
    for field in attrs.fields(cls):
        path = (*prefix, field.name)
        if attrs.has(field.type):  # type: ignore[arg-type]
            keys.extend(all_keys(field.type, path))  # type: ignore[arg-type]
        else:
            keys.append(path)
    return keys


# --- defaults and the example file -------------------------------------------------------


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "")
    assert config == Config()
    assert config.state_dir == "/var/lib/fiberlinkd"
    assert config.api.listen == "127.0.0.1:8470"
    assert config.api.host_port == ("127.0.0.1", 8470)
    assert config.fnn.url == "http://127.0.0.1:8227"
    assert config.admin.socket == "/run/fiberlinkd/admin.sock"
    assert config.assets.enabled == ("CKB",)
    assert config.onchain.enabled is False
    assert config.state_path == Path("/var/lib/fiberlinkd")


def test_example_config_validates_and_equals_the_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == Config()


def test_example_config_names_every_key_with_a_comment() -> None:
    import tomllib

    data = tomllib.loads(EXAMPLE.read_text("utf-8"))
    lines = EXAMPLE.read_text("utf-8").splitlines()
    for path in all_keys(Config):
        table: Any = data
        for part in path:
            assert part in table, f"config/fiberlinkd.toml lacks {'.'.join(path)}"
            table = table[part]
        key_lines = [i for i, line in enumerate(lines) if line.startswith(f"{path[-1]} = ")]
        assert key_lines, path
        assert any(lines[i - 1].startswith("#") for i in key_lines), f"{path} has no comment"


def test_example_config_passes_check_config_on_the_command_line() -> None:
    result = run_cli("check-config", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["api"]["listen"] == "127.0.0.1:8470"
    assert effective["admin"]["socket"] == "/run/fiberlinkd/admin.sock"


def test_missing_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: file not found: .*nope\.toml$"):
        load_config(tmp_path / "nope.toml", environ={})


def test_sections_and_keys_are_read_from_the_file(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        state_dir = "/srv/fl"
        [api]
        listen = "[::1]:9000"
        [api.rate_limits]
        tip_create_per_user_per_minute = 3
        [assets]
        enabled = ["CKB", "USDI"]
        [settlement]
        max_checks_per_s = 5
        [onchain]
        enabled = true
        """,
    )
    assert config.state_dir == "/srv/fl"
    assert config.api.host_port == ("::1", 9000)
    assert config.api.rate_limits.tip_create_per_user_per_minute == 3
    assert config.assets.enabled == ("CKB", "USDI")
    assert config.settlement.max_checks_per_s == 5.0
    assert isinstance(config.settlement.max_checks_per_s, float)
    assert config.onchain.enabled is True


# --- environment overrides ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "read"),
    [
        ("FIBERLINKD_STATE_DIR", "/srv/elsewhere", lambda c: c.state_dir),
        ("FIBERLINKD_API_LISTEN", "127.0.0.1:9999", lambda c: c.api.listen),
        ("FIBERLINKD_FNN_URL", "https://fnn.internal:8228/", lambda c: c.fnn.url),
        ("FIBERLINKD_ADMIN_SOCKET", "/run/other/a.sock", lambda c: c.admin.socket),
        ("FIBERLINKD_LOG_LEVEL", "debug", lambda c: c.log_level),
    ],
)
def test_each_environment_override_wins_over_the_file(
    tmp_path: Path, variable: str, value: str, read: Any
) -> None:
    file_text = EXAMPLE.read_text("utf-8")
    assert read(load_text(tmp_path, file_text)) != value
    config = load_text(tmp_path, file_text, {variable: value})
    assert read(config) == value
    # nothing else moved
    others = attrs.asdict(config)
    defaults = attrs.asdict(Config())
    keys = ENV_OVERRIDES[variable]
    target_o: Any = others
    target_d: Any = defaults
    for key in keys[:-1]:
        target_o, target_d = target_o[key], target_d[key]
    target_o[keys[-1]] = target_d[keys[-1]]
    assert others == defaults


def test_the_issue_names_every_override_variable() -> None:
    assert {
        "FIBERLINKD_STATE_DIR",
        "FIBERLINKD_API_LISTEN",
        "FIBERLINKD_FNN_URL",
        "FIBERLINKD_ADMIN_SOCKET",
    } <= set(ENV_OVERRIDES)


def test_overrides_apply_without_a_file_section(tmp_path: Path) -> None:
    config = load_text(tmp_path, "", {"FIBERLINKD_FNN_URL": "http://10.0.0.5:8227"})
    assert config.fnn.url == "http://10.0.0.5:8227"


def test_a_bad_override_is_reported_under_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: \[api\] listen: not an IP:PORT"):
        load_text(tmp_path, "", {"FIBERLINKD_API_LISTEN": "localhost:80"})


def test_override_into_a_key_that_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: \[api\]: must be a table$"):
        load_text(tmp_path, 'api = "x"', {"FIBERLINKD_API_LISTEN": "127.0.0.1:1"})


def test_unrelated_environment_is_ignored(tmp_path: Path) -> None:
    assert load_text(tmp_path, "", {"FIBERLINKD_NOPE": "1", "PATH": "/bin"}) == Config()


def test_check_config_sees_environment_overrides() -> None:
    result = run_cli(
        "check-config",
        "--config",
        str(EXAMPLE),
        env=clean_env(FIBERLINKD_STATE_DIR="/srv/flk-override"),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state_dir"] == "/srv/flk-override"


# --- bad values: exit 2, one line naming the key ------------------------------------------

BAD_VALUES = [
    ('[fnn]\nurl = "ftp://x"\n', "config: [fnn] url: not an http(s) URL: 'ftp://x'"),
    ('[fnn]\nurl = "http://"\n', "config: [fnn] url: not an http(s) URL: 'http://'"),
    (
        '[onchain]\nckb_rpc_url = "localhost:8114"\n',
        "config: [onchain] ckb_rpc_url: not an http(s) URL: 'localhost:8114'",
    ),
    (
        '[api]\nlisten = "localhost:8470"\n',
        "config: [api] listen: not an IP:PORT address (e.g. 127.0.0.1:8470): 'localhost:8470'",
    ),
    (
        '[api]\nlisten = "127.0.0.1:70000"\n',
        "config: [api] listen: not an IP:PORT address (e.g. 127.0.0.1:8470): '127.0.0.1:70000'",
    ),
    (
        '[api]\nlisten = "127.0.0.1"\n',
        "config: [api] listen: not an IP:PORT address (e.g. 127.0.0.1:8470): '127.0.0.1'",
    ),
    (
        "[api]\nmax_body_bytes = 0\n",
        "config: [api] max_body_bytes: must be a positive number, got 0",
    ),
    (
        "[api]\ngraceful_timeout_s = -1.5\n",
        "config: [api] graceful_timeout_s: must be a positive number, got -1.5",
    ),
    (
        "[settlement]\nmax_checks_per_s = inf\n",
        "config: [settlement] max_checks_per_s: must be a positive number, got inf",
    ),
    (
        "[settlement]\nexpiry_grace_s = -1\n",
        "config: [settlement] expiry_grace_s: must be zero or more, got -1.0",
    ),
    (
        "[api.rate_limits]\ntip_create_per_user_per_minute = 0\n",
        "config: [api.rate_limits] tip_create_per_user_per_minute:"
        " must be a positive number, got 0",
    ),
    (
        "[tips]\ninvoice_expiry_s = 1.5\n",
        "config: [tips] invoice_expiry_s: expected an integer, got 1.5",
    ),
    (
        '[tips]\ninvoice_expiry_s = "3600"\n',
        "config: [tips] invoice_expiry_s: expected an integer, got '3600'",
    ),
    (
        "[tips]\ninvoice_expiry_s = true\n",
        "config: [tips] invoice_expiry_s: expected an integer, got True",
    ),
    (
        '[onchain]\nenabled = "false"\n',
        "config: [onchain] enabled: expected true or false, got 'false'",
    ),
    ("[onchain]\nenabled = 0\n", "config: [onchain] enabled: expected true or false, got 0"),
    ("state_dir = 5\n", "config: state_dir: expected a string, got 5"),
    ("[tips]\nmin_amount = 1\n", "config: [tips] min_amount: expected a string, got 1"),
    (
        '[tips]\nmin_amount = "-1"\n',
        "config: [tips] min_amount: amount must be a plain decimal number, got '-1'",
    ),
    (
        '[withdrawals]\nmin_amount = "1e3"\n',
        "config: [withdrawals] min_amount: amount must be a plain decimal number, got '1e3'",
    ),
    ('[assets]\nenabled = ["BTC"]\n', "config: [assets] enabled: allowed: CKB, USDI"),
    ("[assets]\nenabled = []\n", "config: [assets] enabled: allowed: CKB, USDI"),
    (
        '[withdrawals]\nallowed_assets = ["XYZ"]\n',
        "config: [withdrawals] allowed_assets: allowed: CKB, USDI",
    ),
    (
        "[assets]\nenabled = [1]\n",
        "config: [assets] enabled: expected a list of strings, got [1]",
    ),
    (
        'log_level = "verbose"\n',
        "config: log_level: must be one of debug, info, warning, error; got 'verbose'",
    ),
    ('log_format = "xml"\n', "config: log_format: must be text or json; got 'xml'"),
    ("colour = 1\n", "config: colour: unknown key"),
    ("[fnn]\nurll = 1\n", "config: [fnn] urll: unknown key"),
    ("[api.rate_limits]\nburst = 1\n", "config: [api.rate_limits] burst: unknown key"),
    ('fnn = "x"\n', "config: [fnn]: must be a table"),
]


@pytest.mark.parametrize(("text", "message"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        BAD_VALUES[0],
        ('[onchain]\nenabled = "false"\n', "config: [onchain] enabled: expected true or false"),
        ("colour = 1\n", "config: colour: unknown key"),
        ("x = [\n", "not valid TOML"),
    ],
)
def test_check_config_exits_2_with_exactly_one_stderr_line(
    tmp_path: Path, text: str, message: str
) -> None:
    result = run_cli("check-config", "--config", str(write(tmp_path, text, "bad.toml")))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("config: ")
    assert message in lines[0]


def test_run_and_migrate_also_refuse_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = write(tmp_path, '[fnn]\nurl = "ftp://x"\n', "bad.toml")
    for command in ("run", "migrate"):
        result = run_cli(command, "--config", str(bad))
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == ["config: [fnn] url: not an http(s) URL: 'ftp://x'"]


def test_check_config_on_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"config: file not found: {tmp_path / 'missing.toml'}"


# --- secrets ------------------------------------------------------------------------------


def test_secret_is_read_from_its_file_and_stripped(tmp_path: Path) -> None:
    token = write(tmp_path, "s3cret-token\n", "fnn-token")
    assert read_secret(str(token), "fnn-token", environ={}) == "s3cret-token"


def test_secret_comes_from_systemd_credentials_when_no_file_is_named(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fnn-token").write_text("from-systemd")
    environ = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert read_secret("", "fnn-token", environ=environ) == "from-systemd"
    assert read_secret("", "hot-wallet-key", environ=environ) is None


def test_a_named_secret_file_wins_over_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fnn-token").write_text("from-systemd")
    named = write(tmp_path, "from-file", "token")
    environ = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert read_secret(str(named), "fnn-token", environ=environ) == "from-file"


def test_no_secret_configured_means_none(tmp_path: Path) -> None:
    assert read_secret("", "fnn-token", environ={}) is None
    empty_creds = tmp_path / "creds"
    empty_creds.mkdir()
    assert read_secret("", "fnn-token", environ={"CREDENTIALS_DIRECTORY": str(empty_creds)}) is None


def test_missing_or_empty_secret_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: cannot read secret file .*absent"):
        read_secret(str(tmp_path / "absent"), "fnn-token", environ={})
    empty = write(tmp_path, " \n", "empty")
    with pytest.raises(ConfigError, match=r"^config: secret file .*empty is empty$"):
        read_secret(str(empty), "fnn-token", environ={})


def test_secret_values_never_reach_check_config_output(tmp_path: Path) -> None:
    token = write(tmp_path, "TOPSECRET-VALUE", "fnn-token")
    key = write(tmp_path, "KEY-MATERIAL-VALUE", "hot-key")
    config_path = write(
        tmp_path,
        f'[fnn]\ntoken_file = "{token}"\n[onchain]\nhot_wallet_key_file = "{key}"\n',
    )
    config = load_config(config_path, environ={})
    assert "TOPSECRET" not in json.dumps(redacted(config))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fnn-token").write_text("CREDENTIAL-VALUE")
    result = run_cli(
        "check-config",
        "--config",
        str(config_path),
        env=clean_env(CREDENTIALS_DIRECTORY=str(creds)),
    )
    assert result.returncode == 0, result.stderr
    for secret in ("TOPSECRET", "KEY-MATERIAL", "CREDENTIAL-VALUE"):
        assert secret not in result.stdout + result.stderr
    assert json.loads(result.stdout)["fnn"]["token_file"] == str(token)


def test_redacted_config_is_plain_json_data() -> None:
    data = redacted(Config())
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {field.name for field in attrs.fields(Config)}


def test_a_fee_cap_above_fnns_default_rate_cap_is_refused(tmp_path: Path) -> None:
    """FNN also caps fees at 0.5 % unless max_fee_rate is sent; a larger cap would be a lie."""
    path = tmp_path / "fee.toml"
    path.write_text("[withdrawals]\nmax_fee_ppm = 6000\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith("config: [withdrawals] max_fee_ppm: must be from 0 to 5000")
