"""Every setting is documented in .env.example with its default, and nothing else is there; an
invalid one stops every command with one line that names it and what it allows, exit 2."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Literal, get_args, get_origin

import annotated_types
import pytest
from pydantic.fields import FieldInfo

from poller.cli import main
from poller.resources import PROJECT_ROOT
from poller.settings import Settings

NONE = type(None)


def test_env_example_lists_every_setting_with_its_default():
    text = (PROJECT_ROOT / ".env.example").read_text()
    documented = dict(re.findall(r"^WA_([A-Z_]+)=(.*)$", text, flags=re.M))
    fields = Settings.model_fields
    assert {k.lower() for k in documented} == set(fields)
    defaults = Settings(_env_file=None)
    for key, value in documented.items():
        default = getattr(defaults, key.lower())
        if default is None:
            assert value == "", key
        elif isinstance(default, bool):
            assert value == str(default).lower(), key
        else:
            assert type(default)(value) == default, key


def _invalid_values(name: str, field: FieldInfo) -> list[str]:
    """Values each setting must refuse, derived from its type and bounds."""
    kind = field.annotation
    if get_origin(kind) is UnionType:  # X | None
        kind = next(t for t in get_args(kind) if t is not NONE)
    if kind is bool:
        return ["maybe"]
    if get_origin(kind) is Literal:
        return ["bogus"]
    if kind in (int, float):
        values = ["many"] + (["1.5"] if kind is int else [])
        for bound in field.metadata:
            if isinstance(bound, annotated_types.Ge):
                values.append(str(bound.ge - 1))
            elif isinstance(bound, annotated_types.Gt):
                values.append(str(bound.gt))
            elif isinstance(bound, annotated_types.Le):
                values.append(str(bound.le + 1))
        return values
    if name == "metrics_addr":
        return ["9464", "localhost", "x:70000", "x:0", "x:port"]
    if name in ("database_url", "session_store_url"):
        return ["notaurl", "postgresql://u:s3cret@[::1", "postgresql://u:s3cret@host:port/db"]
    assert kind in (str, Path), f"{name}: a new kind of setting; say here what it refuses"
    return []  # free text


INVALID = [
    pytest.param(name, value, id=f"{name}={value}")
    for name, field in Settings.model_fields.items()
    for value in _invalid_values(name, field)
]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No WA_ variable from outside and no .env file."""
    for key in list(os.environ):
        if key.startswith("WA_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_an_invalid_setting_is_one_line_naming_it_and_exit_2(clean_env, capsys, name, value):
    clean_env.setenv(f"WA_{name.upper()}", value)
    assert main(["sessions", "list"]) == 2
    out = capsys.readouterr()
    line = _one_line(out.err)
    assert line.startswith(f"wa-poller: error: invalid setting: WA_{name.upper()}="), line
    assert "should be" in line and "s3cret" not in line, line
    assert out.out == ""


def test_a_rule_across_settings_names_them(clean_env, capsys):
    clean_env.setenv("WA_HEARTBEAT_INTERVAL", "10")
    clean_env.setenv("WA_LEASE_TTL", "15")
    assert main(["sessions", "list"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "WA_LEASE_TTL must be at least twice WA_HEARTBEAT_INTERVAL" in line


COMMANDS = [
    ["run"],
    ["run", "--transport", "neonize"],
    ["db", "bootstrap"],
    ["sessions", "add"],
    ["sessions", "list"],
    ["pair", "00000000-0000-4000-8000-000000000001"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    "setting", ["WA_DATABASE_URL=notaurl", "WA_RATE_PER_MINUTE=-5", "--database-url=notaurl"]
)
def test_every_command_refuses_a_bad_setting_in_one_line(tmp_path, command, setting):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    args = [*command]
    if setting.startswith("--"):
        args.append(setting)
        env["WA_DATABASE_URL"] = "postgresql://wa_poller@127.0.0.1:1/postgres"
    else:
        key, value = setting.split("=", 1)
        env[key] = value
    # Before: `run` retried a malformed URL for ever; the timeout makes that a failure.
    result = subprocess.run(
        [sys.executable, "-m", "poller.cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    variable = setting.split("=", 1)[0]
    assert line.startswith("wa-poller: error: ") and variable in line, line
    assert "should be" in line, line
