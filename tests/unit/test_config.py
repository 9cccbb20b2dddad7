"""Configuration: every problem reported with field, value and fix."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from config import ConfigError, validate
from config.example import sim_example, sim_node_id
from config.names import checked_table, is_agent_table, log_table, normalise_phone
from daemon.cli import node_setup
from daemon.cli.main import main as ctl
from tests.config_edits import invalid


@pytest.fixture
def raw(tmp_path: Path) -> dict[str, Any]:
    return tomllib.loads(sim_example(tmp_path))


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return [str(p) for p in info.value.problems]


def test_example_is_complete_and_valid(raw: dict[str, Any], tmp_path: Path) -> None:
    config = validate(raw)
    assert len(config.agents) == 11
    assert [g.name for g in config.line_groups] == ["bulk-1", "bulk-2", "bulk-3", "test", "auth"]
    assert {m.carrier.value for m in config.modems} == {"SKT", "KT", "LGU"}
    assert config.socket.path == tmp_path / "node.sock"
    assert config.modems[1].mcc_mnc == ["45008", "45002", "45004"]
    assert config.mysql.database == "test" and config.postgres.database == "test"
    assert config.dispatch.backlog_bound == 10_000


def test_node_id_is_unique_per_directory(tmp_path: Path) -> None:
    assert sim_node_id(tmp_path / "a") != sim_node_id(tmp_path / "b")


@pytest.mark.parametrize(
    "table",
    [
        "SMSQ_SEND_1; DROP TABLE x",
        "SMSQ_SEND_1\n",
        "SMSQ_SEND_١",
        "SMSQ_SEND_1234",
        "smsq_send_1",
        "SMSQ_SEND_1_202611",
        " SMSQ_SEND_1",
        "SMSQ_SEND_１",
    ],
)
def test_bad_table_names_are_rejected_with_field_and_value(raw: dict[str, Any], table: str) -> None:
    raw["agents"][0]["table"] = table
    found = problems(raw)
    assert any(p.startswith("agents[0].table = " + repr(table)) for p in found), found
    assert any("fix:" in p for p in found)


def test_table_name_checks() -> None:
    assert is_agent_table("SMSQ_SEND") and is_agent_table("SMSQ_SEND_11")
    assert checked_table("SMSQ_SEND_3_202611") == "SMSQ_SEND_3_202611"
    with pytest.raises(ValueError):
        checked_table("SMSQ_SEND_3_202611\n")
    from datetime import date

    assert log_table("SMSQ_SEND_3", date(2026, 11, 27)) == "SMSQ_SEND_3_202611"


def test_agent_in_two_groups_and_in_none(raw: dict[str, Any]) -> None:
    raw["line_groups"][0]["agents"].append(4)  # 4 is in bulk-2 already
    raw["line_groups"][2]["agents"].remove(9)  # 9 in no group now
    found = problems(raw)
    assert any(p.startswith("agents[3].number = 4") and "bulk-1, bulk-2" in p for p in found)
    assert any(p.startswith("agents[8].number = 9") and "no group" in p for p in found)


def test_exactly_one_test_and_one_auth_group(raw: dict[str, Any]) -> None:
    raw["line_groups"][4]["type"] = "test"
    found = problems(raw)
    assert any("2 test groups" in p for p in found)
    assert any("0 auth groups" in p for p in found)


def test_carrier_without_modem(raw: dict[str, Any]) -> None:
    raw["modems"] = [m for m in raw["modems"] if m["carrier"] != "KT"]
    assert any(p.startswith("modems.carrier = 'KT'") for p in problems(raw))


def test_duplicates(raw: dict[str, Any]) -> None:
    raw["agents"][1]["table"] = raw["agents"][0]["table"]
    raw["agents"][2]["admin"] = raw["agents"][0]["admin"]
    raw["modems"][1]["device"] = raw["modems"][0]["device"]
    raw["modems"][2]["phone"] = raw["modems"][0]["phone"]
    found = problems(raw)
    for prefix in ("agents[1].table", "agents[2].admin", "modems[1].device", "modems[2].phone"):
        assert any(p.startswith(prefix) and "duplicate" in p for p in found), (prefix, found)


def test_impossible_timings(raw: dict[str, Any]) -> None:
    raw["dispatch"]["lease_renew_s"] = 40
    raw["spam_tests"]["grace_min_s"] = 50
    raw["supervision"]["check_interval_s"] = -1
    found = problems(raw)
    assert any(p.startswith("dispatch.lease_renew_s = 40") for p in found)
    assert any(p.startswith("spam_tests.grace_min_s = 50") for p in found)
    assert any(p.startswith("supervision.check_interval_s = -1") for p in found)


def test_a_web_window_with_no_room_for_a_verdict_is_refused(raw: dict[str, Any]) -> None:
    raw["spam_tests"]["web_window_margin_s"] = 45
    found = problems(raw)
    assert any(p.startswith("spam_tests.web_window_margin_s = 45") for p in found), found
    raw["spam_tests"]["web_window_margin_s"] = 3
    assert validate(raw).spam_tests.web_window_margin_s == 3


def test_canaries_need_a_sender_number(raw: dict[str, Any]) -> None:
    raw["spam_tests"]["canary_interval_s"] = 600
    found = problems(raw)
    assert any(p.startswith("spam_tests.canary_callback") for p in found), found
    raw["spam_tests"]["canary_callback"] = "12"
    assert any(p.startswith("spam_tests.canary_callback = '12'") for p in problems(raw))


def test_every_problem_is_reported_at_once(raw: dict[str, Any]) -> None:
    broken = copy.deepcopy(raw)
    broken["agents"][0]["table"] = "SMSQ_SEND_1; DROP TABLE x"
    broken["line_groups"][0]["agents"].append(5)
    broken["modems"][0]["phone"] = "021234567"
    broken["unknown_section"] = {}
    found = problems(broken)
    assert len(found) >= 4, found


def test_environment_overrides_the_file(
    raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from config.loader import load_config

    path = tmp_path / "node.toml"
    path.write_text(sim_example(tmp_path))
    monkeypatch.setenv("HANJULLO_MYSQL__PORT", "3307")
    monkeypatch.setenv("HANJULLO_NODE__NAME", "from-env")
    config = load_config(path)
    assert config.mysql.port == 3307
    assert config.node.name == "from-env"


def test_secrets_are_never_printed(raw: dict[str, Any]) -> None:
    raw["postgres"]["password"] = "hunter2-secret"
    config = validate(raw)
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in str(config.model_dump())


def test_phone_normalisation() -> None:
    assert normalise_phone("+82 10-1234-5678") == "01012345678"
    assert normalise_phone("010-1234-5678") == "01012345678"
    assert normalise_phone("821012345678") == "01012345678"
    assert normalise_phone("02-123-4567") == "021234567"
    assert normalise_phone("+8215886000") == "15886000"
    assert normalise_phone("+82212345678") == "0212345678"
    assert normalise_phone("1588-6000") == "15886000"


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    text = sim_example(tmp_path)
    path.write_text(text)
    assert ctl(["config", "check", "--config", str(path)]) == 0
    path.write_text(invalid(text, ("agents", 0, "table"), "SMSQ_SEND_1; DROP TABLE x"))
    assert ctl(["--config", str(path), "config", "check"]) == 1
    out = capsys.readouterr().out
    assert "agents[0].table = 'SMSQ_SEND_1; DROP TABLE x'" in out
    path.write_text(invalid(text, ("agents", 0, "table"), "SMSQ_SEND_1\n"))
    assert ctl(["config", "check", "--config", str(path)]) == 1
    assert "agents[0].table = 'SMSQ_SEND_1\\n'" in capsys.readouterr().out


def test_an_invalid_edit_of_a_key_the_example_lacks_fails(tmp_path: Path) -> None:
    # Otherwise a renamed key would leave the validation tests above checking nothing.
    with pytest.raises(KeyError, match=r"agents\.0\.tabel"):
        invalid(sim_example(tmp_path), ("agents", 0, "tabel"), "x")


def test_config_check_on_missing_and_broken_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl(["config", "check", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "no such file" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid = ")
    assert ctl(["config", "check", "--config", str(bad)]) == 1
    assert "not valid TOML" in capsys.readouterr().out


def test_config_example_prints_the_installed_example_when_there_is_no_checkout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A packaged node has no systemd/ beside its code, only /etc/hanjullo/node.toml.example.
    installed = tmp_path / "etc" / "node.toml.example"
    installed.parent.mkdir()
    installed.write_text('[node]\nid = "node-01"\n')
    monkeypatch.setattr(node_setup, "PRODUCTION_EXAMPLES", (tmp_path / "nope", installed))
    assert ctl(["config", "example"]) == 0
    assert capsys.readouterr().out == installed.read_text()
    installed.unlink()
    assert ctl(["config", "example"]) == 1
    assert "--sim examples are always available" in capsys.readouterr().err


def test_config_example_needs_no_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl(["config", "example", "--sim", "--dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    config = validate(tomllib.loads(text))
    assert config.node.id == sim_node_id(tmp_path.resolve())
    assert str(tmp_path) in str(config.simulator.control_socket)


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_training_secret_is_refused(raw: dict[str, Any], blank: str) -> None:
    raw["dispatch"]["training_secret"] = blank
    [found] = [p for p in problems(raw) if p.startswith("dispatch.training_secret")]
    assert found.startswith(f"dispatch.training_secret = {blank!r}: is empty"), found
    assert "fix: set HANJULLO_DISPATCH__TRAINING_SECRET" in found


def test_the_daemon_refuses_to_start_without_a_training_secret(
    raw: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.main import EXIT_CONFIG
    from daemon.main import main as noded

    del raw["dispatch"]["training_secret"]
    path = tmp_path / "node.toml"
    path.write_text(tomli_w.dumps(raw))
    # The CLI works without it (an operator's shell lacks the daemon's EnvironmentFile) …
    assert ctl(["config", "check", "--config", str(path)]) == 0
    capsys.readouterr()
    # … the daemon does not start with an empty HMAC key.
    assert noded(["--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "dispatch.training_secret = (missing): the daemon needs it" in err
    assert "HANJULLO_DISPATCH__TRAINING_SECRET" in err


def test_infinite_and_nan_timings_are_refused(
    raw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw["dispatch"]["poll_interval_s"] = float("inf")
    raw.setdefault("spam_tests", {})["canary_interval_s"] = float("inf")
    raw.setdefault("phones", {})["sweep_interval_s"] = float("inf")
    raw["socket"]["request_timeout_s"] = float("nan")
    found = problems(raw)
    for field in (
        "dispatch.poll_interval_s = inf",
        "spam_tests.canary_interval_s = inf",
        "phones.sweep_interval_s = inf",
    ):
        [problem] = [p for p in found if p.startswith(field)]
        assert "must be a finite number, not inf or nan; fix: e.g." in problem, problem
    assert any(p.startswith("socket.request_timeout_s = nan") for p in found), found
    # The environment spells it too.
    from config.loader import load_config

    path = tmp_path / "node.toml"
    path.write_text(sim_example(tmp_path))
    monkeypatch.setenv("HANJULLO_SUPERVISION__STOP_TIMEOUT_S", "inf")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(
        str(p).startswith("supervision.stop_timeout_s = 'inf': must be a finite number")
        for p in info.value.problems
    ), info.value.problems
