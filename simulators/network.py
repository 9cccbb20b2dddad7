"""The simulated carrier network behind the QTmsg agents.

Decides, per message, the result code the agent will report and whether (and
when) the handset gets it. It follows the real Korean behaviour: a message a
carrier's spam filter catches is reported as a *success* (6 or 1000) and never
reaches the handset. Unregistered sender numbers fail with 9008; advertising in
21:00-08:00 KST fails with 9012; an MMS without an image fails with 9007.

Test phones (``[[modems]] phone``) are routed to their modem simulator. A text
for a test phone always ends in that handset's storage: while the modem is
unplugged, locked, unregistered or full, the network holds it and retries. A
modem fault never changes the result the agent reports. An LMS reaches a test
phone as an MMS notification whose Subject is the LMS's, blank or absent, as the
carrier's ``mms_subject`` says (docs/test-phones.md, "Matching an LMS").
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from config.clock import KST, NodeClock
from config.model import CarrierNetworkConfig, NodeConfig
from config.names import Carrier, MessageType, international, is_mobile, normalise_phone
from drivers import pdu, wap
from simulators.modem import SimModem

log = structlog.get_logger("sim.network")

MOB_COMPANY = {Carrier.SKT: "11", Carrier.KT: "16", Carrier.LGU: "19"}
MVNO_COMPANY = {Carrier.SKT: "12", Carrier.KT: "17", Carrier.LGU: "20"}
AD_PREFIX = "(광고)"
# How often held messages are offered to their modem again, besides on every state change.
HOLD_RETRY_S = 0.5


@dataclass(frozen=True, slots=True)
class Submission:
    """One row an agent hands to the relay."""

    dest_no: str
    call_back: str
    text: str
    msg_type: str
    subject: str | None
    files: tuple[str, ...]
    ref: str  # e.g. "SMSQ_SEND_10#42", for the ground-truth log


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    mob_company: str | None
    report_delay_s: float


@dataclass(slots=True)
class Held:
    modem: SimModem
    pdus: list[bytes]
    ref: str
    since: float


@dataclass(slots=True)
class Decision:
    """The network's ground truth for one message to a test phone."""

    ref: str
    modem: str
    carrier: str
    code: int
    blocked: bool
    rule: str
    submitted_at: str
    delivered_at: str | None = None
    delay_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "modem": self.modem,
            "carrier": self.carrier,
            "code": self.code,
            "blocked": self.blocked,
            "rule": self.rule,
            "submitted_at": self.submitted_at,
            "delivered_at": self.delivered_at,
            "delay_s": self.delay_s,
        }


@dataclass(slots=True)
class CarrierRules:
    keywords: list[str] = field(default_factory=list)
    url_patterns: list[re.Pattern[str]] = field(default_factory=list)
    senders: set[str] = field(default_factory=set)

    @classmethod
    def from_config(cls, section: CarrierNetworkConfig) -> CarrierRules:
        return cls(
            list(section.block_keywords),
            [re.compile(p) for p in section.block_url_patterns],
            {normalise_phone(s) for s in section.block_senders},
        )

    def match(self, sender: str, text: str) -> str:
        """The rule that blocks this message, or "" when none does."""
        for word in self.keywords:
            if word in text:
                return f"keyword:{word}"
        for pattern in self.url_patterns:
            if pattern.search(text):
                return f"url:{pattern.pattern}"
        if normalise_phone(sender) in self.senders:
            return "sender"
        return ""

    def as_json(self) -> dict[str, Any]:
        return {
            "block_keywords": self.keywords,
            "block_url_patterns": [p.pattern for p in self.url_patterns],
            "block_senders": sorted(self.senders),
        }


def _ksc5601_if_it_fits(text: str) -> pdu.Encoding | None:
    """KSC5601 for a text GSM 7-bit cannot carry and EUC-KR can; else the usual choice."""
    if pdu.choose_encoding(text) == pdu.Encoding.GSM7:
        return None
    try:
        text.encode("euc-kr")
    except UnicodeEncodeError:
        return None
    return pdu.Encoding.KSC5601


def carrier_of(number: str) -> Carrier:
    """A recipient's carrier, assigned deterministically from the number."""
    digest = hashlib.sha256(number.encode()).digest()
    return (Carrier.SKT, Carrier.KT, Carrier.LGU)[digest[0] % 3]


class CarrierNetwork:
    def __init__(self, config: NodeConfig, modems: list[SimModem], clock: NodeClock) -> None:
        self.config = config
        self.clock = clock
        section = config.simulator
        self.settings: dict[Carrier, CarrierNetworkConfig] = {
            carrier: section.network.get(carrier, CarrierNetworkConfig()) for carrier in Carrier
        }
        self.rules = {c: CarrierRules.from_config(s) for c, s in self.settings.items()}
        self.registered = {normalise_phone(s) for s in section.registered_senders}
        self.modems_by_phone = {m.config.phone: m for m in modems}
        self._rng = random.Random(section.seed)
        self._refs = itertools.count(1)
        self._held: list[Held] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.decisions: deque[Decision] = deque(maxlen=2000)
        self._decision_by_ref: dict[str, Decision] = {}
        self._retry_task: asyncio.Task[None] | None = None
        self.delivered = 0

    # ---- the agents' side ---------------------------------------------------------------
    def submit(self, item: Submission) -> Outcome:
        """Decide the result of one message; schedule the handset delivery if any."""
        dest = normalise_phone(item.dest_no)
        modem = self.modems_by_phone.get(dest)
        carrier = Carrier(modem.carrier) if modem else carrier_of(dest)
        success = 6 if item.msg_type == MessageType.SMS.agent_code else 1000
        report = self._rng.uniform(*self.config.simulator.agents.result_delay_s)
        company = MOB_COMPANY[carrier]
        if modem is None and self._rng.random() < 0.1:
            company = MVNO_COMPANY[carrier]
        if not is_mobile(dest):
            return self._decide(item, modem, carrier, 9002, None, report)
        if normalise_phone(item.call_back) not in self.registered:
            return self._decide(item, modem, carrier, 9008, company, report)
        hour = self.clock.now_kst().hour
        if item.text.lstrip().startswith(AD_PREFIX) and (hour >= 21 or hour < 8):
            return self._decide(item, modem, carrier, 9012, company, report)
        if item.msg_type == MessageType.MMS.agent_code and not any(item.files):
            return self._decide(item, modem, carrier, 9007, company, report)
        settings = self.settings[carrier]
        if modem is None and settings.failure_codes and self._rng.random() < settings.failure_rate:
            code = self._rng.choice(settings.failure_codes)
            return self._decide(item, modem, carrier, code, company, report)
        rule = self.rules[carrier].match(item.call_back, f"{item.subject or ''}\n{item.text}")
        return self._decide(item, modem, carrier, success, company, report, rule=rule)

    def _decide(
        self,
        item: Submission,
        modem: SimModem | None,
        carrier: Carrier,
        code: int,
        company: str | None,
        report: float,
        rule: str = "",
    ) -> Outcome:
        if modem is not None:
            decision = Decision(
                item.ref,
                modem.name,
                carrier.value,
                code,
                bool(rule),
                rule,
                datetime.now(UTC).isoformat(),
            )
            self.decisions.append(decision)
            self._decision_by_ref[item.ref] = decision
            while len(self._decision_by_ref) > self.decisions.maxlen:  # type: ignore[operator]
                del self._decision_by_ref[next(iter(self._decision_by_ref))]
            if code in (6, 1000) and not rule:
                low, high = self.settings[carrier].latency_s
                delay = self._rng.uniform(low, high)
                decision.delay_s = round(delay, 3)
                self._spawn(self._deliver_later(modem, item, delay))
            elif rule:
                log.info(
                    "spam filter diverted a message", modem=modem.name, rule=rule, ref=item.ref
                )
        return Outcome(code, company, report)

    # ---- handset delivery ---------------------------------------------------------------
    def handset_pdus(
        self, modem: SimModem, sender: str, text: str, msg_type: str, subject: str | None
    ) -> list[bytes]:
        now = self.clock.now_kst()
        smsc = self.config.simulator.modems.smsc
        reference = next(self._refs) & 0xFF
        if msg_type in (MessageType.LMS.agent_code, MessageType.MMS.agent_code):
            body = text.encode("utf-8")
            number = next(self._refs)
            shown = self.settings[Carrier(modem.carrier)].mms_subject
            note = wap.MmsNotification(
                sender=international(sender),
                subject={"subject": subject or "", "empty": "", "missing": None}[shown],
                size=len(body) + len((subject or "").encode("utf-8")) + 200,
                location=f"http://mms.sim.hanjullo/{modem.carrier.lower()}/{number:08d}",
                transaction_id=f"T{number:010d}",
            )
            return pdu.encode_wap_push(
                international(sender),
                wap.encode_notification(note),
                now,
                smsc,
                reference=reference,
            )
        encoding = None
        if self.settings[Carrier(modem.carrier)].korean_encoding == "ksc5601":
            encoding = _ksc5601_if_it_fits(text)
        return pdu.encode_deliver(sender, text, now, smsc, reference=reference, encoding=encoding)

    async def _deliver_later(self, modem: SimModem, item: Submission, delay: float) -> None:
        await asyncio.sleep(delay)
        pdus = self.handset_pdus(modem, item.call_back, item.text, item.msg_type, item.subject)
        self.hand_over(modem, pdus, item.ref)

    def hand_over(self, modem: SimModem, pdus: list[bytes], ref: str) -> bool:
        """Give the handset its message now, or hold it until the modem can take it."""
        if not self._held_for(modem) and modem.deliver(pdus):
            self._delivered(ref)
            return True
        self._held.append(Held(modem, pdus, ref, asyncio.get_running_loop().time()))
        log.info(
            "network holds a message",
            modem=modem.name,
            ref=ref,
            reason="modem cannot receive" if not modem.can_receive() else "storage full",
        )
        self._ensure_retry()
        return False

    def _held_for(self, modem: SimModem) -> bool:
        return any(h.modem is modem for h in self._held)

    def _delivered(self, ref: str) -> None:
        self.delivered += 1
        decision = self._decision_by_ref.get(ref)
        if decision is not None:
            decision.delivered_at = datetime.now(UTC).isoformat()

    def flush(self) -> None:
        """Offer held messages again, oldest first, keeping each modem's order."""
        stuck: set[int] = set()
        remaining: list[Held] = []
        for held in self._held:
            if id(held.modem) not in stuck and held.modem.deliver(held.pdus):
                self._delivered(held.ref)
            else:
                stuck.add(id(held.modem))
                remaining.append(held)
        self._held = remaining

    def _ensure_retry(self) -> None:
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.create_task(self._retry_held(), name="network-held")

    async def _retry_held(self) -> None:
        while self._held:
            await asyncio.sleep(HOLD_RETRY_S)
            self.flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = [*self._tasks]
        if self._retry_task is not None:
            tasks.append(self._retry_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- control ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "registered_senders": sorted(self.registered),
            "rules": {c.value: r.as_json() for c, r in self.rules.items()},
            "latency_s": {c.value: list(s.latency_s) for c, s in self.settings.items()},
            "held": [
                {"modem": h.modem.name, "ref": h.ref, "parts": len(h.pdus)} for h in self._held
            ],
            "in_transit": len(self._tasks),
            "delivered": self.delivered,
            "decisions": [d.as_json() for d in list(self.decisions)[-200:]],
            "clock": self.clock.now().astimezone(KST).isoformat(),
        }
