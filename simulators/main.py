"""`hanjullo-sim`: every simulated part of a node in one asyncio process, and its control.

``hanjullo-sim --config PATH`` runs the QTmsg agents, the carrier network and the
test modems the configuration describes. ``hanjullo-sim ctl --config PATH …``
talks to it over its control socket (JSON lines). The daemon never talks to the
simulator: it sees only MySQL tables, TCP ports and serial devices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from config.clock import NodeClock
from config.loader import ConfigError, load_config
from config.logs import setup_for
from config.model import NodeConfig
from config.names import Carrier
from simulators.agent import AgentFault, SimAgent
from simulators.modem import ModemFault, ModemProfile, SimModem
from simulators.network import CarrierNetwork

log = structlog.get_logger("sim")

MAX_REQUEST = 1 << 20


class SimError(Exception):
    """A control request that cannot be carried out; the message says why."""


class Simulator:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.clock = NodeClock(config.clock.file)
        section = config.simulator
        self.modems: list[SimModem] = []
        self.network: CarrierNetwork
        for index, modem in enumerate(config.modems):
            self.modems.append(
                SimModem(
                    modem,
                    section.modems.storage_capacity,
                    section.modems.smsc,
                    section.modems.slow_delay_s,
                    on_space=self._modem_space,
                    seed=section.seed + index,
                    late_delay_s=section.modems.late_delay_s,
                    profile=ModemProfile(
                        section.modems.profiles.get(modem.label, section.modems.profile)
                    ),
                )
            )
        self.network = CarrierNetwork(config, self.modems, self.clock)
        self.agents = {
            a.number: SimAgent(a, config, self.network, self.clock) for a in config.agents
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()

    def _modem_space(self) -> None:
        self.network.flush()

    @property
    def control_path(self) -> Path:
        path = self.config.simulator.control_socket
        if path is None:
            raise SimError("the configuration has no [simulator] control_socket")
        return path

    async def start(self) -> None:
        for modem in self.modems:
            modem.plug()
        for agent in self.agents.values():
            # Ports first: once `ctl status` answers, every agent accepts connections.
            await agent.set_fault(AgentFault.OK)
            self._tasks.append(asyncio.create_task(agent.run(), name=f"agent-{agent.agent.number}"))
        path = self.control_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(
            self._client, path=str(path), limit=MAX_REQUEST
        )
        os.chmod(path, 0o660)
        log.info(
            "simulator running", agents=len(self.agents), modems=len(self.modems), control=str(path)
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._clients, return_exceptions=True)
        await self.network.close()
        for modem in self.modems:
            await modem.close()
        with contextlib.suppress(FileNotFoundError, SimError):
            self.control_path.unlink()

    # ---- control protocol ---------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    result = await self.handle(request)
                    reply: dict[str, Any] = {"ok": True, "result": result}
                except (SimError, ValueError, KeyError, TypeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    def modem(self, target: str) -> SimModem:
        for modem in self.modems:
            if modem.name.upper() == target.upper():
                return modem
        for modem in self.modems:
            if modem.carrier.upper() == target.upper():
                return modem
        names = ", ".join(m.name for m in self.modems)
        raise SimError(f"no modem {target!r}; configured: {names}")

    def agent(self, number: int) -> SimAgent:
        if number not in self.agents:
            raise SimError(f"no agent {number}; configured: {sorted(self.agents)}")
        return self.agents[number]

    async def handle(self, request: dict[str, Any]) -> Any:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "modem":
            modem = self.modem(request["target"])
            action = request["action"]
            if action == "replug":
                modem.set_fault(ModemFault.OK, new_name=bool(request.get("new_name")))
            else:
                modem.set_fault(ModemFault(action))
            return modem.status()
        if cmd == "agent":
            agent = self.agent(int(request["number"]))
            await agent.set_fault(AgentFault(request["action"]))
            return agent.status()
        if cmd == "rules":
            carrier = Carrier(request["carrier"].upper())
            rules = self.network.rules[carrier]
            if request.get("clear"):
                rules.keywords.clear()
                rules.url_patterns.clear()
                rules.senders.clear()
            import re as _re

            from config.names import normalise_phone

            rules.keywords.extend(request.get("keywords", []))
            rules.url_patterns.extend(_re.compile(p) for p in request.get("urls", []))
            rules.senders.update(normalise_phone(s) for s in request.get("senders", []))
            return rules.as_json()
        if cmd == "network":
            carrier = Carrier(request["carrier"].upper())
            current = self.network.settings[carrier]
            update: dict[str, Any] = {}
            if request.get("latency") is not None:
                low, high = request["latency"]
                update["latency_s"] = (float(low), float(high))
            if request.get("failure_rate") is not None:
                update["failure_rate"] = float(request["failure_rate"])
            self.network.settings[carrier] = current.model_copy(update=update)
            return self.network.settings[carrier].model_dump(mode="json")
        if cmd == "deliver":
            modem = self.modem(request["target"])
            msg_type = "L" if request.get("lms") else "S"
            pdus = self.network.handset_pdus(
                modem, request["sender"], request["text"], msg_type, request.get("subject")
            )
            stored = self.network.hand_over(modem, pdus, f"ctl#{modem.counters.delivered}")
            return {
                "stored": stored,
                "held": not stored,
                "parts": len(pdus),
                "uid": modem.status()["last_uid"] if stored else None,
            }
        if cmd == "inbox":
            return self.modem(request["target"]).inbox()
        if cmd == "clock":
            action = request.get("action", "show")
            if action == "set":
                self.clock.set_now(datetime.fromisoformat(request["time"]))
            elif action == "reset":
                self.clock.reset()
            return {"now": self.clock.now_kst().isoformat(), "offset_s": self.clock.offset_s()}
        raise SimError(f"unknown command {cmd!r}")

    def status(self) -> dict[str, Any]:
        return {
            "agents": [a.status() for a in self.agents.values()],
            "modems": [m.status() for m in self.modems],
            "network": self.network.status(),
        }


async def _serve(config: NodeConfig) -> int:
    sim = Simulator(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sim.stop.set)
    await sim.start()
    await sim.stop.wait()
    log.info("simulator stopping")
    await sim.close()
    return 0


# ---- ctl client -------------------------------------------------------------------------------
def request(path: Path, payload: dict[str, Any], timeout: float = 30.0) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except FileNotFoundError as exc:
        raise SimError(f"no simulator control socket at {path}: is hanjullo-sim running?") from exc
    except ConnectionRefusedError as exc:
        raise SimError(f"{path} exists but the simulator is not running") from exc
    with sock, sock.makefile("rwb") as stream:
        stream.write(json.dumps(payload, ensure_ascii=False).encode() + b"\n")
        stream.flush()
        line = stream.readline()
    if not line:
        raise SimError("the simulator closed the connection without answering")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise SimError(reply.get("error", "unknown error"))
    return reply["result"]


def _unescape(text: str) -> str:
    """`text` with each ``\\uXXXX`` replaced by that character."""
    return re.sub(r"\\u([0-9A-Fa-f]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _print(result: Any, as_json: bool, render: Any = None) -> None:
    if as_json or render is None:
        print(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))
    else:
        print(render(result))


def _render_inbox(messages: list[dict[str, Any]]) -> str:
    if not messages:
        return "(empty)"
    lines = []
    for m in messages:
        head = f"[{m.get('kind')}] from {m.get('sender')} at {m.get('timestamp')}"
        if m.get("kind") == "mms-notification":
            lines.append(f"{head}  subject={m.get('subject')!r} size={m.get('size')}")
        else:
            lines.append(f"{head}  {m.get('text')}")
    return "\n".join(lines)


def _render_status(status: dict[str, Any]) -> str:
    lines = ["AGENT  FAULT   PORT   MYSQL  PICKED  RESULTS  MOVED"]
    for a in status["agents"]:
        lines.append(
            f"{a['number']:<6} {a['fault']:<7} {('open' if a['port_open'] else 'closed'):<6}"
            f" {('ok' if a['mysql_ok'] else 'down'):<6} {a['picked']:<7} {a['results']:<8}"
            f" {a['moved']}"
        )
    lines.append("")
    lines.append("MODEM  FAULT       PLUGGED  STORED  PTY")
    for m in status["modems"]:
        lines.append(
            f"{m['name']:<6} {m['fault']:<11} {m['plugged']!s:<8} "
            f"{m['stored']}/{m['capacity']:<5} {m['pty']}"
        )
    net = status["network"]
    lines.append("")
    lines.append(
        f"network: delivered {net['delivered']}, in transit {net['in_transit']}, "
        f"held {len(net['held'])}, clock {net['clock']}"
    )
    return "\n".join(lines)


def _ctl(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    path = config.simulator.control_socket
    if path is None:
        raise SimError("the configuration has no [simulator] control_socket")
    what = args.what
    if what == "status":
        _print(request(path, {"cmd": "status"}), args.json, _render_status)
    elif what == "modem":
        _print(
            request(
                path,
                {
                    "cmd": "modem",
                    "target": args.target,
                    "action": args.action,
                    "new_name": args.new_name,
                },
            ),
            args.json,
        )
    elif what == "agent":
        _print(
            request(path, {"cmd": "agent", "number": args.number, "action": args.action}), args.json
        )
    elif what == "rules":
        _print(
            request(
                path,
                {
                    "cmd": "rules",
                    "carrier": args.carrier,
                    "clear": args.clear,
                    "keywords": args.block_keyword,
                    "urls": args.block_url,
                    "senders": args.block_sender,
                },
            ),
            args.json,
        )
    elif what == "network":
        _print(
            request(
                path,
                {
                    "cmd": "network",
                    "carrier": args.carrier,
                    "latency": args.latency,
                    "failure_rate": args.failure_rate,
                },
            ),
            args.json,
        )
    elif what == "deliver":
        if args.lms and args.subject is None:
            raise SimError("--lms needs --subject")
        _print(
            request(
                path,
                {
                    "cmd": "deliver",
                    "target": args.target,
                    "sender": args.sender,
                    "text": _unescape(args.text) if args.escapes else args.text,
                    "lms": args.lms,
                    "subject": args.subject,
                },
            ),
            args.json,
        )
    elif what == "inbox":
        _print(request(path, {"cmd": "inbox", "target": args.target}), args.json, _render_inbox)
    elif what == "clock":
        payload: dict[str, Any] = {"cmd": "clock", "action": args.action or "show"}
        if args.action == "set":
            if not args.time:
                raise SimError("clock set needs a time, e.g. 2026-11-27T22:00+09:00")
            payload["time"] = args.time
        _print(request(path, payload), args.json, lambda r: r["now"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="node configuration")
    parser = argparse.ArgumentParser(
        prog="hanjullo-sim",
        parents=[common],
        description="Simulated QTmsg agents, carriers and modems",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser(
        "proxy",
        add_help=False,
        help="a fault-injecting TCP proxy: hanjullo-sim proxy serve|ctl (see proxy --help)",
    )
    sub.add_parser(
        "fleet",
        add_help=False,
        help="K simulated nodes, a central registry and one nginx: fleet --nodes K --dir DIR",
    )
    ctl = sub.add_parser("ctl", parents=[common], help="control the running simulator")
    ctl_sub = ctl.add_subparsers(dest="what", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = ctl_sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON document")
        return p

    add("status", "agents, modems and network")
    p = add("modem", "switch a modem's failure mode")
    p.add_argument("target", help="carrier (SKT, KT, LGU) or modem name")
    p.add_argument("action", choices=[*[f.value for f in ModemFault], "replug"])
    p.add_argument("--new-name", action="store_true", help="replug under a new pty name")
    p = add("agent", "switch an agent's failure mode")
    p.add_argument("number", type=int)
    p.add_argument("action", choices=[f.value for f in AgentFault])
    p = add("rules", "a carrier's spam rules")
    p.add_argument("carrier", choices=[c.value for c in Carrier], type=str.upper)
    p.add_argument("--block-keyword", action="append", default=[])
    p.add_argument("--block-url", action="append", default=[], help="a regular expression")
    p.add_argument("--block-sender", action="append", default=[])
    p.add_argument("--clear", action="store_true")
    p = add("network", "a carrier's delivery latency and failure rate")
    p.add_argument("carrier", choices=[c.value for c in Carrier], type=str.upper)
    p.add_argument("--latency", nargs=2, type=float, metavar=("LOW", "HIGH"))
    p.add_argument("--failure-rate", type=float)
    p = add("deliver", "put a text straight into a handset's storage")
    p.add_argument("target")
    p.add_argument("--from", dest="sender", required=True)
    p.add_argument("--text", required=True)
    p.add_argument(
        "--escapes",
        action="store_true",
        help=r"read \uXXXX in --text as that character (a NUL cannot travel in argv)",
    )
    p.add_argument("--lms", action="store_true")
    p.add_argument("--subject")
    p = add("inbox", "what a handset holds, decoded")
    p.add_argument("target")
    p = add("clock", "show, set or reset the node clock")
    p.add_argument("action", nargs="?", choices=["show", "set", "reset"])
    p.add_argument("time", nargs="?")
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["proxy"]:
        # The fault proxy needs no node configuration: it has its own command line.
        from simulators import faultproxy

        return faultproxy.main(words[1:])
    if words[:1] == ["fleet"]:
        # A whole fleet: it writes every node's configuration itself.
        from simulators import fleet

        return fleet.main(words[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "config", None):
        parser.error("--config PATH is required")
    try:
        if args.command == "ctl":
            return _ctl(args)
        config = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"hanjullo-sim: {exc}", file=sys.stderr)
        return 1
    except SimError as exc:
        print(f"hanjullo-sim: {exc}", file=sys.stderr)
        return 1
    setup_for(config.logging, name="sim")
    return asyncio.run(_serve(config))


if __name__ == "__main__":
    sys.exit(main())
