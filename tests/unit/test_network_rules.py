"""The simulated carriers' spam rules and routing decisions, in process."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from config.clock import NodeClock
from config.example import sim_example
from config.loader import validate
from drivers import pdu
from simulators.modem import ModemFault, SimModem
from simulators.network import CarrierNetwork, CarrierRules, Submission, carrier_of


def test_rules_match_keywords_urls_and_senders() -> None:
    import re

    rules = CarrierRules(["대출"], [re.compile(r"bit\.ly/")], {"0299999999"})
    assert rules.match("0212345678", "저금리 대출") == "keyword:대출"
    assert rules.match("0212345678", "see https://bit.ly/abc") == r"url:bit\.ly/"
    assert rules.match("02-9999-9999", "hello") == "sender"
    assert rules.match("0212345678", "hello") == ""


def test_recipient_carrier_is_the_same_in_every_process() -> None:
    # The simulator, a test and a bench each compute a recipient's carrier on their own and
    # must agree; Python's str hash differs per process, so two hash seeds are tried.
    numbers = [f"010{i:08d}" for i in range(50)]
    script = (
        "import sys; from simulators.network import carrier_of; "
        "print(','.join(carrier_of(n) for n in sys.argv[1:]))"
    )
    here = [str(carrier_of(n)) for n in numbers]
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", script, *numbers],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip().split(",") == here, seed
    assert set(here) == {"SKT", "KT", "LGU"}


async def test_a_modem_fault_never_changes_the_reported_result(tmp_path: Path) -> None:
    config = validate(tomllib.loads(sim_example(tmp_path)))
    modem = SimModem(config.modems[1], 5, "+8210", 1.0)
    modem.plug()
    network = CarrierNetwork(config, [modem], NodeClock(None))
    item = Submission(config.modems[1].phone, "0212345678", "hello", "S", None, (), "t#1")
    healthy = network.submit(item)
    modem.set_fault(ModemFault.UNPLUG)
    unplugged = network.submit(
        Submission(item.dest_no, item.call_back, item.text, item.msg_type, None, (), "t#2")
    )
    assert healthy.code == unplugged.code == 6
    await network.close()
    await modem.close()


@pytest.mark.parametrize(
    ("shown", "subject"), [("subject", "가을 세일"), ("empty", ""), ("missing", None)]
)
async def test_an_lms_notification_shows_the_subject_as_the_carrier_is_set(
    tmp_path: Path, shown: str, subject: str | None
) -> None:
    """`mms_subject`: the LMS's Subject, a blank one or none at all (as some MMSCs send
    it); the sender, the stated size and the location are there in every form."""
    raw = tomllib.loads(sim_example(tmp_path))
    raw["simulator"].setdefault("network", {}).setdefault("KT", {})["mms_subject"] = shown
    config = validate(raw)
    modem = next(SimModem(m, 5, "+8210", 1.0) for m in config.modems if m.carrier == "KT")
    network = CarrierNetwork(config, [modem], NodeClock(None))
    body = "한" * 300
    parts = network.handset_pdus(modem, "0212345678", body, "L", "가을 세일")
    joiner = pdu.Reassembler(timeout_s=60)
    out: list[pdu.Message] = []
    for part in parts:
        decoded = pdu.decode(part)
        assert isinstance(decoded, pdu.Deliver) and decoded.is_wap_push
        out += joiner.add(decoded, 0.0)
    (message,) = out
    assert message.kind == pdu.Kind.MMS_NOTIFICATION and message.mms is not None
    assert message.mms.subject == subject
    assert message.mms.size is not None and message.mms.size >= len(body.encode("euc-kr"))
    assert message.sender == "+82212345678" and message.mms.location.startswith("http://")
    await network.close()
    await modem.close()
