"""The systemd unit and the polkit rule shipped beside it do what their comments say."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
RULE = SYSTEMD / "50-hanjullo-qtmsg.rules"


def unit_values(key: str) -> list[str]:
    # Keys repeat in a unit file, which configparser refuses; collect each occurrence.
    values: list[str] = []
    for line in (SYSTEMD / "hanjullo-noded.service").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            values.append(value.strip())
    return values


def test_device_allow_names_device_groups_only() -> None:
    # A DeviceAllow path must be a device node: a directory such as /dev/serial (the by-id
    # links) allows nothing. Access is checked on the node a link resolves to, so the
    # device groups of USB serial modems (/proc/devices) cover every by-id name and survive
    # the renames of a re-plug.
    allowed = unit_values("DeviceAllow")
    assert allowed, "the unit must allow the modems' devices"
    for entry in allowed:
        spec, _, access = entry.partition(" ")
        assert spec.startswith(("char-", "block-")), f"{entry}: not a device group"
        assert set(access) <= set("rwm") and access, entry
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(allowed)
    assert unit_values("DevicePolicy") == ["closed"]


NODE = shutil.which("node") or shutil.which("nodejs")

JUDGE = """
const fs = require("fs");
let rule = null;
const polkit = {Result: {YES: "yes", NO: "no", NOT_HANDLED: "not handled"},
                addRule: (f) => { rule = f; }};
new Function("polkit", fs.readFileSync(process.argv[1], "utf8"))(polkit);
const cases = JSON.parse(process.argv[2]);
console.log(JSON.stringify(cases.map(([id, user, unit, verb]) => rule(
    {id, lookup: (k) => ({unit, verb})[k]}, {user}))));
"""


@pytest.mark.skipif(NODE is None, reason="node (a JavaScript engine like polkit's) is absent")
def test_the_polkit_rule_lets_the_daemon_restart_qtmsg_agents_and_nothing_else() -> None:
    manage = "org.freedesktop.systemd1.manage-units"
    cases = {
        (manage, "hanjullo", "qtmsg@3.service", "restart"): "yes",
        (manage, "hanjullo", "qtmsg@11.service", "restart"): "yes",
        (manage, "hanjullo", "qtmsg@3.service", "stop"): "not handled",
        (manage, "hanjullo", "qtmsg@3.service", "start"): "not handled",
        (manage, "hanjullo", "ssh.service", "restart"): "not handled",
        (manage, "hanjullo", "qtmsg@3.service.d", "restart"): "not handled",
        (manage, "hanjullo", "xqtmsg@3.service", "restart"): "not handled",
        (manage, "alice", "qtmsg@3.service", "restart"): "not handled",
        ("org.freedesktop.systemd1.manage-unit-files", "hanjullo", "qtmsg@3.service", "restart"): (
            "not handled"
        ),
    }
    assert NODE is not None
    result = subprocess.run(
        [NODE, "-e", JUDGE, str(RULE), json.dumps([list(c) for c in cases])],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dict(zip(cases, json.loads(result.stdout), strict=True)) == cases


def test_the_restart_command_the_docs_show_is_one_the_rule_covers_and_install_says_how() -> None:
    example = (SYSTEMD / "node.toml.example").read_text()
    assert '# restart_command = "systemctl restart qtmsg@1"' in example
    install = (SYSTEMD / "INSTALL.md").read_text()
    assert "/etc/polkit-1/rules.d/" in install and RULE.name in install
    shipped = (SYSTEMD / "debian" / "hanjullo-node.install").read_text().splitlines()
    assert f"systemd/{RULE.name} usr/share/doc/hanjullo-node/" in shipped
