"""`hanjulloctl fleet init|add-node|remove-node|status|place|targets`: the control plane's
side of the fleet (docs/fleet.md).

They read `[control_plane]` of the configuration given: `dsn` is the registry (a role that
may read every row: the control plane's), `ca`, `client_cert` and `client_key` the TLS with
which `fleet status` calls each node's `/v1/status` through its nginx (a fleet certificate
is enough: it only reads). The calls go out all at once, each with its own deadline, so a
node that accepts the connection and never answers costs the view its timeout, no more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import h11
from rich.cells import cell_len

from config.loader import load_control_plane
from config.model import DEFAULT_CONFIG_PATH, ControlPlaneSection
from daemon import registry
from daemon.cli.common import CtlError, Subparsers

DEFAULT_TIMEOUT_S = 10.0
# The most of a node's /v1/status read (a status is a few tens of KiB).
MAX_STATUS_BYTES = 8 * 1024 * 1024
REGISTRY_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def section(args: argparse.Namespace) -> ControlPlaneSection:
    plane = load_control_plane(Path(getattr(args, "config", None) or DEFAULT_CONFIG_PATH))
    if not plane.dsn.get_secret_value():
        raise CtlError(
            "no registry: [control_plane] dsn is empty; fix: set it (or "
            "HANJULLO_CONTROL_PLANE__DSN) to the central PostgreSQL"
        )
    return plane


async def _connect(plane: ControlPlaneSection, timeout_s: float) -> asyncpg.Connection:
    dsn = plane.dsn.get_secret_value()
    try:
        return await asyncpg.connect(dsn, timeout=timeout_s, command_timeout=timeout_s)
    except REGISTRY_ERRORS as exc:
        raise CtlError(
            f"the registry {registry.safe_dsn(dsn)} is unreachable: {type(exc).__name__}: {exc}"
        ) from exc


async def _rows(plane: ControlPlaneSection, timeout_s: float) -> list[registry.NodeRow]:
    conn = await _connect(plane, timeout_s)
    try:
        return await registry.read_nodes(conn)
    except REGISTRY_ERRORS as exc:
        raise CtlError(
            f"the registry {registry.safe_dsn(plane.dsn.get_secret_value())} could not be "
            f"read: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await conn.close()


# ---- calling the nodes ----------------------------------------------------------------------
def tls_context(plane: ControlPlaneSection) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plane.ca) if plane.ca else None)
    if plane.client_cert is not None:
        try:
            context.load_cert_chain(plane.client_cert, plane.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise CtlError(
                f"cannot load the client certificate {plane.client_cert}: {exc}"
            ) from exc
    return context


async def get_json(url: str, context: ssl.SSLContext | None, timeout_s: float) -> Any:
    """GET `url` (https, or http) and its JSON; raises on anything but 200 with JSON, and
    TimeoutError past `timeout_s` for the whole exchange."""
    async with asyncio.timeout(timeout_s):
        return await _get_json(url, context)


async def _get_json(url: str, context: ssl.SSLContext | None) -> Any:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context if secure else None, server_hostname=host if secure else None
    )
    try:
        conn = h11.Connection(h11.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        writer.write(
            conn.send(
                h11.Request(
                    method="GET",
                    target=target,
                    headers=[
                        ("host", parts.netloc),
                        ("accept", "application/json"),
                        ("connection", "close"),
                    ],
                )
            )
        )
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        status = 0
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_STATUS_BYTES:
                    raise ValueError(f"answer over {MAX_STATUS_BYTES} bytes")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    finally:
        # Abort, not close: a TLS close waits for the peer's close_notify, which a node that
        # handshook and never reads does not send, and a node's timeout is all it may cost
        # the view. Nothing is lost: the request said connection: close and the answer was
        # read to its end.
        writer.transport.abort()
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    except RecursionError:
        raise ValueError("answered JSON nested too deeply to read") from None
    if status != 200:
        detail = payload.get("error") if isinstance(payload, dict) else bytes(body[:200])
        raise ValueError(f"answered {status}: {detail!r}")
    if payload is None:
        raise ValueError("answered something that is not JSON")
    return payload


@dataclass
class NodeView:
    row: registry.NodeRow
    state: str = "ok"
    reason: str | None = None
    status: dict[str, Any] | None = None
    # summary(status), computed once where a status of the wrong shape is caught.
    summary: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.row.id,
            "name": self.row.name,
            "state": self.state,
            "reason": self.reason,
            "heartbeat_age_s": round(self.row.heartbeat_age_s, 3),
            "status": self.status,
        }


@dataclass
class FleetView:
    nodes: list[NodeView]
    wall_s: float
    totals: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"nodes": [n.as_json() for n in self.nodes], "totals": self.totals}


def summary(status: Any) -> dict[str, Any]:
    """One node's row of the view, from its /v1/status (nothing when it did not answer).

    A status of another shape raises TypeError, AttributeError or KeyError: `_call` marks
    that node unreachable, and the view goes on with the others."""
    if status is None:
        return {}
    if not isinstance(status, dict):
        raise TypeError(f"the status is a JSON {type(status).__name__}, not an object")
    agents = status.get("agents", [])
    bulk = [g for g in status.get("line_groups", []) if g.get("type") == "bulk"]
    phones: Counter[str] = Counter()
    for modem in status.get("modems", []):
        carrier = modem["carrier"]
        if not isinstance(carrier, str):
            raise TypeError(f"a modem's carrier is {carrier!r}, not a name")
        phones[carrier] += 0
        if modem.get("state") == "ready":
            phones[carrier] += 1
    return {
        "agents_ok": sum(1 for a in agents if a.get("state") == "ok"),
        "agents_total": len(agents),
        "groups_held": sum(1 for g in bulk if g.get("holder") is not None),
        "groups_total": len(bulk),
        "runs_waiting": sum(1 for r in status.get("runs", []) if r.get("status") == "queued"),
        "phones_ready": dict(sorted(phones.items())),
        "spam_tests_queued": len(status.get("spam_tests", {}).get("queue", [])),
    }


def totals(nodes: list[NodeView]) -> dict[str, Any]:
    states = Counter(n.state for n in nodes)
    out: dict[str, Any] = {
        "nodes": len(nodes),
        "ok": states["ok"],
        "stale": states["stale"],
        "unreachable": states["unreachable"],
        "agents_ok": 0,
        "agents_total": 0,
        "groups_held": 0,
        "groups_total": 0,
        "runs_waiting": 0,
        "phones_ready": {},
        "spam_tests_queued": 0,
    }
    phones: Counter[str] = Counter()
    for node in nodes:
        row = node.summary
        for key in ("agents_ok", "agents_total", "groups_held", "groups_total", "runs_waiting"):
            out[key] += row.get(key, 0)
        out["spam_tests_queued"] += row.get("spam_tests_queued", 0)
        for carrier, ready in row.get("phones_ready", {}).items():
            phones[carrier] += ready
    out["phones_ready"] = dict(sorted(phones.items()))
    return out


# What a node's answer can raise, past the network: not JSON, JSON nested too deep for the
# parser, JSON of another shape than a /v1/status (`summary`).
ANSWER_ERRORS = (ValueError, RecursionError, AttributeError, KeyError, TypeError)


def _checked(node: NodeView, status: Any) -> dict[str, Any]:
    """`status` if it is this node's /v1/status; its summary is `node.summary`."""
    if not isinstance(status, dict):
        raise TypeError(f"the status is a JSON {type(status).__name__}, not an object")
    own = status.get("node")
    answered = own.get("id") if isinstance(own, dict) else None
    if answered != node.row.id:
        # Its registered base_url leads to another node (a copied advertise_url): showing
        # that node's state as this one's would be a lie.
        raise ValueError(f"answered for node {answered!r}, not for {node.row.id!r}")
    node.summary = summary(status)
    return status


async def _call(node: NodeView, context: ssl.SSLContext | None, timeout_s: float) -> None:
    started = time.monotonic()
    try:
        if not node.row.base_url:
            raise ValueError("the node registered no base_url ([control_plane] advertise_url)")
        answer = await get_json(node.row.base_url + "/v1/status", context, timeout_s)
        node.status = _checked(node, answer)
    except TimeoutError:
        node.state, node.reason = "unreachable", f"no answer within {timeout_s:g} s"
    except (OSError, ssl.SSLError, h11.ProtocolError, *ANSWER_ERRORS) as exc:
        node.state, node.reason = "unreachable", f"{type(exc).__name__}: {exc}"[:300]
        node.status, node.summary = None, {}
    else:
        if node.row.stale:
            node.state, node.reason = "stale", node.row.stale_reason()
    finally:
        node.elapsed_s = time.monotonic() - started
    if node.state == "unreachable" and node.row.stale:
        node.reason = f"{node.reason}; {node.row.stale_reason()}"


async def build_view(plane: ControlPlaneSection, timeout_s: float) -> FleetView:
    """Read the registry, call every node at once; CtlError when the registry cannot be
    read (the nodes' own failures are their rows' states)."""
    context = tls_context(plane)
    rows = await _rows(plane, timeout_s)
    return await call_nodes(rows, context, timeout_s)


async def call_nodes(
    rows: list[registry.NodeRow], context: ssl.SSLContext | None, timeout_s: float
) -> FleetView:
    """Call every node of `rows` at once; whatever one answers is that node's row only."""
    started = time.monotonic()
    nodes = [NodeView(row) for row in rows]
    await asyncio.gather(*(_call(n, context, timeout_s) for n in nodes))
    view = FleetView(nodes, time.monotonic() - started)
    view.totals = totals(nodes)
    return view


def _phones_text(phones: dict[str, int]) -> str:
    return " ".join(f"{carrier}:{ready}" for carrier, ready in phones.items()) or "-"


def render(view: FleetView) -> str:
    header = (
        "id", "name", "state", "heartbeat", "version", "agents", "groups", "waiting",
        "phones ready", "spam queued",
    )  # fmt: skip
    lines = [header]
    for node in view.nodes:
        row = node.summary
        lines.append(
            (
                node.row.id,
                node.row.name,
                node.state,
                f"{node.row.heartbeat_age_s:.1f}s ago",
                node.row.version,
                f"{row['agents_ok']}/{row['agents_total']}" if row else "-",
                f"{row['groups_held']}/{row['groups_total']} held" if row else "-",
                str(row["runs_waiting"]) if row else "-",
                _phones_text(row["phones_ready"]) if row else "-",
                str(row["spam_tests_queued"]) if row else "-",
            )
        )
    # By display width: a Hangul syllable (a node's name) takes two columns.
    widths = [max(cell_len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(
            cell + " " * (w - cell_len(cell)) for cell, w in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    ]
    for node in view.nodes:
        if node.reason:
            out.append(f"{node.row.id}: {node.state}: {node.reason}")
    t = view.totals
    out.append(
        f"fleet: {t['nodes']} nodes ({t['ok']} ok, {t['stale']} stale, "
        f"{t['unreachable']} unreachable); agents ok {t['agents_ok']}/{t['agents_total']}; "
        f"bulk groups held {t['groups_held']}/{t['groups_total']}; runs waiting "
        f"{t['runs_waiting']}; phones ready {_phones_text(t['phones_ready'])}; spam tests "
        f"queued {t['spam_tests_queued']}"
    )
    return "\n".join(out)


# ---- commands -------------------------------------------------------------------------------
def _timeout(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < 3600:
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 < S < 3600")
    return seconds


def cmd_status(args: argparse.Namespace) -> int:
    plane = section(args)
    view = asyncio.run(build_view(plane, args.timeout))
    if args.json:
        print(json.dumps(view.as_json(), ensure_ascii=False))
    else:
        print(render(view))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    plane = section(args)

    async def init() -> None:
        conn = await _connect(plane, plane.timeout_s)
        try:
            await registry.init_registry(conn)
        finally:
            await conn.close()

    try:
        asyncio.run(init())
    except asyncpg.PostgresError as exc:
        raise CtlError(f"fleet init failed: {exc}; fix the cause and run it again") from exc
    print(f"registry ready: table nodes in {registry.safe_dsn(plane.dsn.get_secret_value())}")
    return 0


def cmd_add_node(args: argparse.Namespace) -> int:
    plane = section(args)

    async def add() -> str:
        conn = await _connect(plane, plane.timeout_s)
        try:
            return await registry.add_node(conn, args.node_id)
        finally:
            await conn.close()

    try:
        password = asyncio.run(add())
    except asyncpg.PostgresError as exc:
        raise CtlError(f"fleet add-node failed: {exc}; run `hanjulloctl fleet init` first") from exc
    # The node's DSN is a secret: stdout only, for the node's EnvironmentFile.
    print(registry.node_dsn(plane.dsn.get_secret_value(), args.node_id, password))
    print(
        f"node {args.node_id}: role {registry.role_of(args.node_id)} may heartbeat its own "
        "row; set HANJULLO_CONTROL_PLANE__DSN on the node to the line above",
        file=sys.stderr,
    )
    return 0


def cmd_remove_node(args: argparse.Namespace) -> int:
    plane = section(args)

    async def remove() -> bool:
        conn = await _connect(plane, plane.timeout_s)
        try:
            return await registry.remove_node(conn, args.node_id)
        finally:
            await conn.close()

    try:
        had_role = asyncio.run(remove())
    except asyncpg.PostgresError as exc:
        raise CtlError(f"fleet remove-node failed: {exc}") from exc
    print(f"node {args.node_id} removed" + ("" if had_role else " (it had no role)"))
    return 0


def cmd_place(args: argparse.Namespace) -> int:
    plane = section(args)
    rows = asyncio.run(_rows(plane, plane.timeout_s))
    candidates, excluded = registry.placement(rows)
    proposal = candidates[0]["id"] if candidates else None
    if args.json:
        print(
            json.dumps(
                {"proposal": proposal, "candidates": candidates, "excluded": excluded},
                ensure_ascii=False,
            )
        )
    else:
        for rank, c in enumerate(candidates, 1):
            print(
                f"{rank}. {c['id']} ({c['name']}): headroom {c['score']:.2f} {c['verdict']}; "
                + "; ".join(c["reasons"])
            )
        for e in excluded:
            print(f"-  {e['id']} ({e['name']}): not proposed, stale: {e['reason']}")
        if proposal is not None:
            print(f"proposal: {proposal}")
    if proposal is None:
        print("hanjulloctl: no fresh node to place a company on", file=sys.stderr)
        return 1
    return 0


def targets(rows: list[registry.NodeRow]) -> list[dict[str, Any]]:
    """Prometheus file_sd: one target per node, its /metrics through its nginx."""
    out = []
    for row in rows:
        if not row.base_url:
            continue
        parts = urlsplit(row.base_url)
        out.append(
            {
                "targets": [parts.netloc],
                "labels": {
                    "__scheme__": parts.scheme,
                    "__metrics_path__": parts.path.rstrip("/") + "/metrics",
                    "node_id": row.id,
                    "node_name": row.name,
                },
            }
        )
    return out


def cmd_targets(args: argparse.Namespace) -> int:
    plane = section(args)
    rows = asyncio.run(_rows(plane, plane.timeout_s))
    print(json.dumps(targets(rows), ensure_ascii=False, indent=2))
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    fleet = sub.add_parser("fleet", parents=[common], help="the registry and the fleet view")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True)
    init = fleet_sub.add_parser(
        "init", parents=[common], help="create the registry (table nodes); idempotent"
    )
    init.set_defaults(func=cmd_init)
    add = fleet_sub.add_parser(
        "add-node",
        parents=[common],
        help="create a node's role (or rotate its password) and print its DSN",
    )
    add.add_argument("node_id")
    add.set_defaults(func=cmd_add_node)
    remove = fleet_sub.add_parser(
        "remove-node", parents=[common], help="drop a node's row and role"
    )
    remove.add_argument("node_id")
    remove.set_defaults(func=cmd_remove_node)
    status = fleet_sub.add_parser(
        "status", parents=[common], help="every node's state, called all at once"
    )
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds each node may take (default {DEFAULT_TIMEOUT_S:g})",
    )
    status.set_defaults(func=cmd_status)
    place = fleet_sub.add_parser(
        "place", parents=[common], help="rank the fresh nodes for a new company by headroom"
    )
    place.add_argument("--json", action="store_true")
    place.set_defaults(func=cmd_place)
    tg = fleet_sub.add_parser(
        "targets", parents=[common], help="Prometheus file_sd JSON of the nodes' metrics"
    )
    tg.set_defaults(func=cmd_targets)
