"""The modem simulator, observed only through its pty (pyserial) and the gammu CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from simulators.harness import SimulatedNode, wait_for
from tests.integration.helpers import at, serial_port

LONG_KOREAN = "긴 한국어 메시지 테스트입니다. " * 12


def device(sim: SimulatedNode, carrier: str) -> str:
    return str(sim.dir / "dev" / f"modem-{carrier.lower()}")


@pytest.fixture
def lgu(live_sim: SimulatedNode) -> Iterator[str]:
    """The LGU modem, emptied, in mode ok; restored afterwards."""
    path = device(live_sim, "LGU")
    live_sim.sim_ctl("modem", "LGU", "ok")
    with serial_port(path) as port:
        at(port, "AT+CMGD=1,4")
    yield path
    live_sim.sim_ctl("modem", "LGU", "ok")
    wait_for(lambda: os.path.exists(path), 5, "the LGU device")
    with serial_port(path) as port:
        at(port, "AT+CMGD=1,4")


def test_identity_and_network_replies(live_sim: SimulatedNode, lgu: str) -> None:
    with serial_port(lgu) as port:
        assert "OK" in at(port, "AT")
        assert "+CPIN: READY" in at(port, "AT+CPIN?")
        assert '+COPS: 0,2,"45006",7' in at(port, "AT+COPS?")
        assert "+CREG: 0,1" in at(port, "AT+CREG?")
        assert "+CSQ: 20,99" in at(port, "AT+CSQ")
        assert at(port, "AT+CIMI").split()[1].startswith("45006")
        assert "+CME ERROR: 4" not in at(port, "AT+CMEE=1")
        assert "+CME ERROR" in at(port, "AT+CFUN=9")
        assert "+CMS ERROR: 321" in at(port, "AT+CMGR=99")


def test_cmti_announces_each_delivery_and_reads_are_counted(
    live_sim: SimulatedNode, lgu: str
) -> None:
    with serial_port(lgu) as port:
        at(port, "AT+CNMI=2,1,0,2,0")
        port.reset_input_buffer()
        stored = json.loads(
            live_sim.sim_ctl(
                "deliver", "LGU", "--from", "0212345678", "--text", "이벤트 알림", "--json"
            ).stdout
        )
        assert stored["stored"]
        urc = b""
        deadline = time.monotonic() + 2
        while b"+CMTI" not in urc and time.monotonic() < deadline:
            urc += port.read(64)
        assert b'+CMTI: "SM",1' in urc
        reply = at(port, "AT+CMGR=1")
        assert "+CMGR: 0,," in reply
    status = json.loads(live_sim.sim_ctl("status", "--json").stdout)
    modem = next(m for m in status["modems"] if m["name"] == "LGU")
    assert modem["reads"][str(stored["uid"])] == 1


def test_unplug_removes_the_device_and_replug_can_rename_it(
    live_sim: SimulatedNode, lgu: str
) -> None:
    before = os.path.realpath(lgu)
    port = serial.Serial(lgu, 115200, timeout=2)
    try:
        live_sim.sim_ctl("modem", "LGU", "unplug")
        assert not os.path.exists(lgu)
        with pytest.raises(serial.SerialException):
            port.read(1)
            port.write(b"AT\r")
            port.read(1)
    finally:
        port.close()
    with pytest.raises(serial.SerialException):
        serial.Serial(lgu, 115200)
    # A text sent while unplugged is held by the network ...
    held = json.loads(
        live_sim.sim_ctl(
            "deliver", "LGU", "--from", "0212345678", "--text", "held while unplugged", "--json"
        ).stdout
    )
    assert held["held"] is True
    live_sim.sim_ctl("modem", "LGU", "replug", "--new-name")
    wait_for(lambda: os.path.exists(lgu), 5, "the replugged device")
    assert os.path.realpath(lgu) != before
    with serial_port(lgu) as port:
        assert "OK" in at(port, "AT")
    # ... and lands once the handset is back.
    inbox = json.loads(live_sim.sim_ctl("inbox", "LGU", "--json").stdout)
    assert any(m["text"] == "held while unplugged" for m in inbox)


def test_hang_accepts_bytes_but_never_answers(live_sim: SimulatedNode, lgu: str) -> None:
    live_sim.sim_ctl("modem", "LGU", "hang")
    with serial_port(lgu) as port:
        assert at(port, "AT", timeout_s=1.0) == ""
    live_sim.sim_ctl("modem", "LGU", "ok")
    with serial_port(lgu) as port:
        assert "OK" in at(port, "AT")


def test_garbage_mixes_noise_into_replies(live_sim: SimulatedNode, lgu: str) -> None:
    live_sim.sim_ctl("modem", "LGU", "garbage")
    with serial_port(lgu) as port:
        reply = at(port, "AT+CPIN?")
    assert "+CPIN: READY" in reply and "OK" in reply
    noise = reply.replace("AT+CPIN?", "").replace("+CPIN: READY", "").replace("OK", "")
    assert noise.strip("\r\n") != ""
    assert "~" in noise


def test_sim_locked(live_sim: SimulatedNode, lgu: str) -> None:
    live_sim.sim_ctl("modem", "LGU", "sim-locked")
    with serial_port(lgu) as port:
        at(port, "AT+CMEE=1")
        assert "+CPIN: SIM PIN" in at(port, "AT+CPIN?")
        assert "+CME ERROR: 11" in at(port, "AT+CMGL=4")
        assert "+CREG: 0,0" in at(port, "AT+CREG?")


def test_no_network(live_sim: SimulatedNode, lgu: str) -> None:
    live_sim.sim_ctl("modem", "LGU", "no-network")
    with serial_port(lgu) as port:
        assert "+CREG: 0,2" in at(port, "AT+CREG?")
        cops = at(port, "AT+COPS?")
        assert "+COPS: 0\r\n" in cops and "45006" not in cops
        assert "+CSQ: 99,99" in at(port, "AT+CSQ")


def test_slow_answers_late(live_sim: SimulatedNode, lgu: str) -> None:
    live_sim.sim_ctl("modem", "LGU", "slow")
    with serial_port(lgu) as port:
        start = time.monotonic()
        assert "OK" in at(port, "AT", timeout_s=5)
        assert time.monotonic() - start >= 1.0


def test_full_storage_holds_texts_in_the_network(live_sim: SimulatedNode, lgu: str) -> None:
    for i in range(8):
        out = json.loads(
            live_sim.sim_ctl(
                "deliver", "LGU", "--from", "15886000", "--text", f"fill {i}", "--json"
            ).stdout
        )
        assert out["stored"]
    extra = json.loads(
        live_sim.sim_ctl(
            "deliver", "LGU", "--from", "15886000", "--text", "waits for space", "--json"
        ).stdout
    )
    assert extra["held"]
    with serial_port(lgu) as port:
        assert "+CPMS: 8,8" in at(port, 'AT+CPMS="SM","SM"')
        at(port, "AT+CMGD=3")
    inbox = wait_for(
        lambda: [
            m
            for m in json.loads(live_sim.sim_ctl("inbox", "LGU", "--json").stdout)
            if m["text"] == "waits for space"
        ],
        5,
        "held text",
    )
    assert inbox


# ---- gammu, as an independent client -----------------------------------------------------
gammu_cli = shutil.which("gammu")


@pytest.mark.skipif(gammu_cli is None, reason="Debian gammu is installed by `make setup`")
def test_gammu_cli_identifies_and_reads_korean_ascii_and_concatenated(
    live_sim: SimulatedNode, tmp_path: Path
) -> None:
    path = device(live_sim, "SKT")
    with serial_port(path) as port:
        at(port, "AT+CMGD=1,4")
    texts = [
        ("0212345678", "안녕하세요 한줄로 테스트 😀"),
        ("15886000", "plain ascii [x] {y} ~ euro €"),
        ("0212345678", LONG_KOREAN),
    ]
    for sender, text in texts:
        live_sim.sim_ctl("deliver", "SKT", "--from", sender, "--text", text)
    rc = tmp_path / "gammurc"
    rc.write_text(f"[gammu]\ndevice = {path}\nconnection = at\n")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    ident = subprocess.run(
        [gammu_cli, "-c", str(rc), "identify"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    assert "Hanjullo Simulated Modems" in ident and "45005" in ident
    listing = subprocess.run(
        [gammu_cli, "-c", str(rc), "geteachsms"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    assert "안녕하세요 한줄로 테스트 😀" in listing
    assert "plain ascii [x] {y} ~ euro €" in listing
    assert "Default GSM alphabet" in listing
    assert LONG_KOREAN.strip() in listing
    assert "Concatenated (linked) message" in listing
    with serial_port(path) as port:
        at(port, "AT+CMGD=1,4")
