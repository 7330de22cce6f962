"""The systemd unit, its sysusers/tmpfiles snippets, and how they fit the daemon's defaults.

Rules under test:
- the unit declares what the daemon relies on: ``Type=notify`` with the watchdog, restarts
  on failure (but not on a bad config, exit 2), the dedicated user, state/runtime/config
  directories that match the config defaults, and the FNN token as a systemd credential
  under the name the daemon reads;
- every hardening directive of the design is present, and ``systemd-analyze security
  --offline=yes`` rates the unit's exposure 2.0 or lower ("OK");
- ``systemd-analyze verify`` is clean. ExecStart names ``/opt/fiberlinkd/venv/bin/fiberlinkd``,
  which does not exist on a test machine, so verify runs on a copy whose ExecStart points at
  an existing binary (``true``); on the original the only complaint allowed is that one.
Tests that need ``systemd-analyze`` skip, saying so, where it is not installed.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fiberlinkd import daemon
from fiberlinkd.config import Config

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "fiberlinkd.service"
SYSUSERS = REPO / "systemd" / "fiberlinkd.sysusers.conf"
TMPFILES = REPO / "systemd" / "fiberlinkd.tmpfiles.conf"
EXPOSURE_LIMIT = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def directives(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, repeated keys kept in order (comments dropped)."""
    found: dict[str, list[str]] = {}
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=value line: {raw!r}"
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def one(unit: dict[str, list[str]], key: str) -> str:
    values = unit.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "--no-pager", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


# --- what the unit declares ---------------------------------------------------------------


def test_unit_runs_the_daemon_as_a_notify_service_with_a_watchdog() -> None:
    unit = directives(UNIT)
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "WatchdogSec") == "30"
    assert one(unit, "ExecStart") == (
        "/opt/fiberlinkd/venv/bin/fiberlinkd run --config /etc/fiberlinkd/fiberlinkd.toml"
    )
    assert one(unit, "Restart") == "on-failure"
    assert int(one(unit, "RestartSec")) > 0
    # exit 2 is a bad config: restarting cannot fix it
    assert one(unit, "RestartPreventExitStatus") == "2"
    # stopping must outlast the API's graceful drain
    assert int(one(unit, "TimeoutStopSec")) > Config().api.graceful_timeout_s


def test_unit_runs_as_the_dedicated_user_from_sysusers() -> None:
    unit = directives(UNIT)
    assert one(unit, "User") == one(unit, "Group") == "fiberlinkd"
    assert one(unit, "DynamicUser") == "no"
    entries = [
        line.split()
        for line in SYSUSERS.read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(e[0], e[1]) for e in entries] == [("u", "fiberlinkd")]


def test_unit_directories_match_the_config_defaults() -> None:
    unit = directives(UNIT)
    defaults = Config()
    assert one(unit, "StateDirectory") == "fiberlinkd"
    assert defaults.state_dir == "/var/lib/fiberlinkd"
    assert one(unit, "StateDirectoryMode") == "0750"
    assert one(unit, "RuntimeDirectory") == "fiberlinkd"
    assert one(unit, "RuntimeDirectoryMode") == "0750"
    assert Path(defaults.admin.socket).parent == Path("/run/fiberlinkd")
    assert one(unit, "ConfigurationDirectory") == "fiberlinkd"
    assert "--config /etc/fiberlinkd/" in one(unit, "ExecStart")
    tmpfiles = TMPFILES.read_text("utf-8")
    assert re.search(r"^d\s+/etc/fiberlinkd\s+0750\s+root\s+fiberlinkd\b", tmpfiles, re.M)


def test_the_fnn_token_arrives_as_the_credential_the_daemon_reads() -> None:
    unit = directives(UNIT)
    assert unit["LoadCredential"] == ["fnn-token:/etc/fiberlinkd/fnn-token"]
    assert '"fnn-token"' in inspect.getsource(daemon.build_fnn_client)
    text = UNIT.read_text("utf-8")
    assert "#LoadCredential=hot-wallet-key:/etc/fiberlinkd/hot-wallet-key" in text
    # no secret is ever passed on the command line or in the environment
    assert "Environment" not in unit
    assert "token" not in one(unit, "ExecStart")


HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateUsers": "yes",
    "PrivateMounts": "yes",
    "NoNewPrivileges": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "UMask": "0027",
    "IPAddressDeny": "any",
    "IPAddressAllow": "localhost",
    "DevicePolicy": "closed",
    "KeyringMode": "private",
    "RemoveIPC": "yes",
}


@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_unit_has_the_hardening_directive(key: str, value: str) -> None:
    assert one(directives(UNIT), key) == value


def test_unit_filters_system_calls_to_the_service_set_minus_privileged() -> None:
    assert directives(UNIT)["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


# --- systemd-analyze ----------------------------------------------------------------------


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary replaced by one that exists here, arguments kept."""
    true = shutil.which("true")
    assert true is not None
    text = UNIT.read_text("utf-8")
    copy_text, count = re.subn(
        r"^ExecStart=/opt/fiberlinkd/venv/bin/fiberlinkd ",
        f"ExecStart={true} ",
        text,
        flags=re.M,
    )
    assert count == 1
    copy = tmp_path / "fiberlinkd.service"
    copy.write_text(copy_text, "utf-8")
    return copy


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    copy = runnable_copy(tmp_path)
    result = analyze("verify", str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


@needs_analyze
def test_verify_on_the_original_only_misses_the_installed_binary(tmp_path: Path) -> None:
    result = analyze("verify", str(UNIT), cwd=tmp_path)
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    unexpected = [line for line in complaints if "/opt/fiberlinkd/venv/bin/fiberlinkd" not in line]
    assert unexpected == [], result.stderr


def exposure(tmp_path: Path, unit: Path) -> float:
    result = analyze("security", "--offline=yes", str(unit), cwd=tmp_path)
    if result.returncode != 0 and "offline" in result.stderr.lower():
        pytest.skip(f"this systemd-analyze has no --offline mode: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_analyze
def test_security_exposure_is_ok(tmp_path: Path) -> None:
    score = exposure(tmp_path, UNIT)
    assert score <= EXPOSURE_LIMIT, f"exposure {score} > {EXPOSURE_LIMIT}"


@needs_analyze
def test_security_score_notices_a_weakened_unit(tmp_path: Path) -> None:
    # guards the parser above: an unhardened unit must score worse
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nType=notify\nExecStart=/bin/true\n", "utf-8")
    assert exposure(tmp_path, bare) > EXPOSURE_LIMIT


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers absent")
def test_sysusers_snippet_creates_the_service_user_and_group() -> None:
    sysusers = shutil.which("systemd-sysusers")
    assert sysusers is not None
    result = subprocess.run(
        [sysusers, "--dry-run", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Failed" not in result.stderr
    assert "ignoring" not in result.stderr
    if "Would write" in result.stderr:  # the user does not exist yet on this machine
        assert "Creating user 'fiberlinkd'" in result.stderr
