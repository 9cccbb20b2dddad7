"""The daemon process: READY, the status socket, SIGTERM, SIGHUP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from simulators.harness import SimulatedNode, wait_for
from tests.config_edits import edit, settings


def test_ready_quickly_and_status_lists_the_node(sim_node: SimulatedNode) -> None:
    ready_s = sim_node.start_daemon()
    # READY waits for neither agents nor modems (nothing is simulated here).
    assert ready_s < 2.0, f"READY after {ready_s:.2f}s"
    raw = subprocess.run(
        [
            "curl",
            "-sS",
            "--unix-socket",
            str(sim_node.dir / "node.sock"),
            "http://localhost/v1/status",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    status = json.loads(raw)
    assert len(status["agents"]) == 11
    assert len(status["line_groups"]) == 5
    assert len(status["modems"]) == 3
    assert status["node"]["id"].startswith("sim-")
    assert status["runs"] == [] and status["spam_tests"]["active"] == []
    names = {c["name"] for c in status["components"]}
    assert {
        "status-server",
        "postgres",
        "redis",
        "agent-monitor",
        "scheduler",
        "dispatcher",
        "modem:SKT",
        "modem:KT",
        "modem:LGU",
    } <= names
    # No simulator: the modems are absent and their managers say so.
    states = sim_node.wait_components(
        lambda s: s["modem:KT"] == "degraded" and s["postgres"] == "running", 10, "modem state"
    )
    assert states["status-server"] == "running"
    modem = next(m for m in sim_node.status()["modems"] if m["carrier"] == "KT")
    assert modem["state"] == "absent" and "not present" in modem["reason"]
    assert modem["phone"] == "010****0002"


def test_status_cli_table_and_metrics(sim_node: SimulatedNode) -> None:
    sim_node.start_daemon()
    table = sim_node.ctl("status").stdout
    assert "COMPONENT" in table and "SMSQ_SEND_11" in table and "bulk-3" in table
    metrics = subprocess.run(
        [
            "curl",
            "-sS",
            "--unix-socket",
            str(sim_node.dir / "node.sock"),
            "http://localhost/metrics",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert 'hanjullo_component_state{component="postgres",state="running"}' in metrics
    assert "hanjullo_agent_reachable" in metrics
    assert "hanjullo_modem_ready" in metrics
    assert 'hanjullo_spam_tests{state="queued"} 0.0' in metrics
    assert 'hanjullo_spam_grace_seconds{carrier="KT"} 25.0' in metrics


def test_sigterm_exits_zero_quickly_and_removes_socket(sim_node: SimulatedNode) -> None:
    sim_node.start_daemon()
    sock = sim_node.dir / "node.sock"
    assert sock.exists()
    code = sim_node.stop_daemon(signal.SIGTERM, timeout_s=10)
    assert code == 0
    assert not sock.exists()
    assert sim_node.notify is not None
    assert any("STOPPING=1" in m for _, m in sim_node.notify.messages) or "STOPPING=1" in "".join(
        sim_node.notify.drain(0.5)
    )


def test_status_cli_explains_a_missing_daemon(sim_node: SimulatedNode) -> None:
    result = sim_node.ctl("status", check=False)
    assert result.returncode != 0
    assert "not running" in result.stderr
    assert result.stdout == ""


def test_sighup_reloads_safe_sections_and_names_the_rest(sim_node: SimulatedNode) -> None:
    sim_node.start_daemon()
    text = sim_node.config_path.read_text()
    text = settings(text, {"supervision": {"check_interval_s": 1.5}, "mysql": {"port": 3307}})
    sim_node.config_path.write_text(text)
    assert sim_node.daemon is not None
    sim_node.daemon.send_signal(signal.SIGHUP)
    log = sim_node.dir / "logs" / "noded.log"

    def reloaded() -> dict[str, object] | None:
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("event") == "configuration reloaded":
                return entry  # type: ignore[no-any-return]
        return None

    entry = wait_for(reloaded, 10, "the reload log line")
    assert entry["applied"] == ["supervision"]
    assert entry["needs_restart"] == ["mysql"]
    # Still serving, and still on the old MySQL port.
    assert sim_node.component_states()["status-server"] == "running"


@pytest.mark.skipif(
    subprocess.run(["which", "systemd-analyze"], capture_output=True, check=False).returncode,
    reason="systemd-analyze not installed",
)
def test_unit_file_verifies(tmp_path: object) -> None:
    from pathlib import Path

    unit = Path(__file__).resolve().parents[2] / "systemd" / "hanjullo-noded.service"
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    # Only complaints about this unit count (the host's other units are not ours).
    ours = [
        line
        for line in result.stderr.splitlines()
        if "hanjullo-noded.service" in line
        and "not found" not in line.lower()
        and "Command /usr/bin/hanjullo-noded" not in line
        and "is not executable" not in line
    ]
    assert not ours, result.stderr


def test_with_the_simulator_every_component_runs(sim_node: SimulatedNode) -> None:
    sim_node.start_sim()
    sim_node.start_daemon()
    states = sim_node.wait_components(
        lambda s: all(v == "running" for v in s.values()), 20, "every component running"
    )
    assert len(states) == 10  # 5 services, dispatcher, spam-test engine, 3 modem managers
    status = wait_for(
        lambda: (s := sim_node.status()) and all(a["state"] == "ok" for a in s["agents"]) and s,
        10,
        "every agent ok",
    )
    assert {m["state"] for m in status["modems"]} == {"ready"}
    assert all(a["reachable"] for a in status["agents"])
    # The agent monitor sees an agent stop: port closed, state unreachable, with its reason.
    sim_node.sim_ctl("agent", "3", "stop")
    wait_for(
        lambda: (
            next(a for a in sim_node.status()["agents"] if a["number"] == 3)["state"]
            == "unreachable"
        ),
        10,
        "agent 3 unreachable",
    )
    component = next(c for c in sim_node.status()["components"] if c["name"] == "agent-monitor")
    assert "3" in component["reason"]
    sim_node.sim_ctl("agent", "3", "ok")
    # An unplugged modem makes its manager degraded; a replug brings it back by itself.
    sim_node.sim_ctl("modem", "KT", "unplug")
    sim_node.wait_components(lambda s: s["modem:KT"] == "degraded", 10, "modem:KT degraded")
    sim_node.sim_ctl("modem", "KT", "replug", "--new-name")
    sim_node.wait_components(lambda s: s["modem:KT"] == "running", 10, "modem:KT running")


def test_watchdog_pings_when_systemd_asks_for_them(sim_node: SimulatedNode) -> None:
    sim_node.start_daemon(env={"WATCHDOG_USEC": "400000"})
    assert sim_node.notify is not None
    wait_for(
        lambda: (
            sum("WATCHDOG=1" in m for m in sim_node.notify.drain(0.1)) >= 1
            or sum("WATCHDOG=1" in m for _, m in sim_node.notify.messages) >= 3
        ),
        5,
        "three watchdog pings",
    )
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for _, m in sim_node.notify.messages)


def test_a_down_agent_is_restarted_by_its_command_at_most_once_per_interval(
    node_dir: Path,
) -> None:
    sim = Path(sys.executable).parent / "hanjullo-sim"
    config = node_dir.resolve() / "node.toml"

    def restartable(raw: dict[str, Any]) -> None:
        agent = next(a for a in raw["agents"] if a["number"] == 3)
        agent["restart_command"] = f"{sim} ctl --config {config} agent 3 ok"
        raw["supervision"].update(check_interval_s=0.5, restart_min_interval_s=60.0)

    node = SimulatedNode(node_dir, overrides=lambda text: edit(text, restartable))
    try:
        node.db_init()
        node.start_sim()
        node.start_daemon()

        def agent3() -> dict[str, Any]:
            return next(a for a in node.status()["agents"] if a["number"] == 3)

        wait_for(lambda: agent3()["state"] == "ok", 20, "agent 3 ok")
        node.sim_ctl("agent", "3", "stop")
        restarted = wait_for(
            lambda: (a := agent3())["state"] == "ok" and a["restart"] and a,
            30,
            "agent 3 restarted by its command",
        )
        assert restarted["restart"]["result"].startswith("exit 0")
        assert restarted["restart"]["reason"] == "unreachable"
        assert restarted["restart"]["count"] == 1
        # Down again within the interval: not restarted again, and the status says so.
        node.sim_ctl("agent", "3", "stop")
        wait_for(lambda: agent3()["state"] == "unreachable", 10, "agent 3 down again")
        time.sleep(3.0)  # six checks
        again = agent3()
        assert again["state"] == "unreachable" and again["restart"]["count"] == 1
    finally:
        node.close()
