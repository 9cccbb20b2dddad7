"""The node's HTTP API: every route of the status socket and of the proxy's sockets, and
the JSON each takes and answers (docs/status-api.md).

The same routes serve `hanjulloctl` on the status socket and the control plane through
nginx (systemd/nginx/); who may call which is decided by the socket's roles
(`daemon.http`), never here. A handler reads PostgreSQL through the node's pool and acts
through the dispatcher and the spam-test engine; it owns no state.
"""

from __future__ import annotations

import json
import string
import uuid
from typing import Any, Protocol
from urllib.parse import parse_qs

from prometheus_client import generate_latest

from daemon.dispatcher import Dispatcher
from daemon.http import Handler, Request, Response
from daemon.runtime import Runtime
from daemon.spamtest import SpamTestEngine
from daemon.stores import PostgresKeeper
from daemon.supervisor import DependencyDown
from dispatch.runs import listing
from dispatch.runs import view as run_view
from dispatch.spamtests import SpamTestRejected, SpamTestSpec, create_tests
from dispatch.spamtests import show as show_tests
from dispatch.spamtests.store import nodes_of
from dispatch.store import intake
from dispatch.store.runs import RunStatus

# `GET /v1/runs` answers at most this many runs, newest first (`limit` may ask for fewer).
RUNS_LIMIT_DEFAULT = 100
RUNS_LIMIT_MAX = 1000
# The spam-test fields `POST /v1/spam-tests` accepts; anything else is refused by name.
SPAM_TEST_FIELDS = frozenset(
    {
        "callback",
        "message",
        "messages",
        "lms",
        "subject",
        "company",
        "user",
        "variant",
        "run_id",
        "source",
    }
)
SPAM_TEST_SOURCES = ("manual", "auto_ai")


class BadRequest(Exception):
    """A request the API cannot take: 400 with the field, the value and the fix."""


def _uuid_at(path: str, index: int, what: str) -> uuid.UUID:
    parts = path.strip("/").split("/")
    try:
        return uuid.UUID(parts[index])
    except (IndexError, ValueError):
        raise BadRequest(f"expected a {what} (a UUID) in {path}") from None


def _parts(path: str) -> list[str]:
    return path.strip("/").split("/")


def _query(request: Request) -> dict[str, str]:
    """The query's fields, each given at most once."""
    fields = parse_qs(request.query, keep_blank_values=True)
    repeated = sorted(k for k, v in fields.items() if len(v) > 1)
    if repeated:
        raise BadRequest(f"give {', '.join(repeated)} once")
    return {k: v[0] for k, v in fields.items()}


def _json_body(request: Request) -> dict[str, Any]:
    if not request.body.strip():
        raise BadRequest('expected a JSON object as the body, e.g. {"callback": "0212345678"}')
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON (UTF-8): {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(body).__name__}")
    return body


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"{name} must be a string, not {json.dumps(value, ensure_ascii=False)}")


def spam_test_specs(node_id: str, body: dict[str, Any]) -> list[SpamTestSpec]:
    """The tests a `POST /v1/spam-tests` body asks for: one per message (a batch of
    variants A, B, C … for several)."""
    unknown = sorted(set(body) - SPAM_TEST_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(SPAM_TEST_FIELDS))}"
        )
    callback = _text(body, "callback")
    if not callback:
        raise BadRequest('callback is required: the sender number, e.g. "0212345678"')
    if "message" in body and "messages" in body:
        raise BadRequest("give message (one test) or messages (a batch), not both")
    if "messages" in body:
        messages = body["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, str) for m in messages)
        ):
            raise BadRequest("messages must be a non-empty list of strings")
        if len(messages) > len(string.ascii_uppercase):
            raise BadRequest(f"at most {len(string.ascii_uppercase)} messages per batch")
    else:
        message = _text(body, "message")
        if message is None:
            raise BadRequest("message (the text to test) or messages (a batch) is required")
        messages = [message]
    lms = body.get("lms", False)
    if not isinstance(lms, bool):
        raise BadRequest(f"lms must be true or false, not {json.dumps(lms)}")
    subject = _text(body, "subject")
    if lms and not subject:
        raise BadRequest("an LMS test (lms: true) needs a subject")
    source = body.get("source", "manual")
    if source not in SPAM_TEST_SOURCES:
        raise BadRequest(f"source must be one of {', '.join(SPAM_TEST_SOURCES)}, not {source!r}")
    run_text = _text(body, "run_id")
    try:
        run_id = uuid.UUID(run_text) if run_text else None
    except ValueError:
        raise BadRequest(f"run_id must be a run id (a UUID), not {run_text!r}") from None
    batch = len(messages) > 1
    return [
        SpamTestSpec(
            node_id=node_id,
            callback=callback,
            sms_text=None if lms else text,
            lms_text=text if lms else None,
            subject=subject if lms else None,
            company_id=_text(body, "company"),
            user_id=_text(body, "user"),
            source=source,
            variant=string.ascii_uppercase[i] if batch else _text(body, "variant"),
            run_id=run_id,
        )
        for i, text in enumerate(messages)
    ]


def runs_filter(request: Request) -> dict[str, Any]:
    """The filters of `GET /v1/runs` (`company`, `campaign`, `status`, `limit`)."""
    query = _query(request)
    unknown = sorted(set(query) - {"company", "campaign", "status", "limit"})
    if unknown:
        raise BadRequest(
            f"unknown query field(s) {', '.join(unknown)}; fields: company, campaign, status, limit"
        )
    out: dict[str, Any] = {"company_id": query.get("company") or None}
    if query.get("campaign"):
        try:
            out["campaign_id"] = uuid.UUID(query["campaign"])
        except ValueError:
            raise BadRequest(
                f"campaign must be a campaign id (a UUID), not {query['campaign']!r}"
            ) from None
    statuses = tuple(s for s in (query.get("status") or "").split(",") if s)
    known = {s.value for s in RunStatus}
    wrong = [s for s in statuses if s not in known]
    if wrong:
        raise BadRequest(
            f"status {', '.join(wrong)} is not a run status; statuses: "
            + ", ".join(s.value for s in RunStatus)
        )
    out["statuses"] = statuses
    limit_text = query.get("limit") or str(RUNS_LIMIT_DEFAULT)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= RUNS_LIMIT_MAX:
        raise BadRequest(f"limit must be 1-{RUNS_LIMIT_MAX}, not {limit_text!r}")
    out["limit"] = int(limit_text)
    return out


class ServedNode(Protocol):
    """What the handlers use of the node (`daemon.node.Node`)."""

    runtime: Runtime
    dispatcher: Dispatcher
    spam_tests: SpamTestEngine
    postgres: PostgresKeeper

    def snapshot(self) -> dict[str, Any]: ...


class NodeAPI:
    """The handlers, bound to a running node."""

    def __init__(self, node: ServedNode) -> None:
        self.node = node

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/v1/status"): self.status,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/v1/runs"): self._guarded(self.runs),
            ("GET", "/v1/runs/*"): self._guarded(self.run_show),
            ("POST", "/v1/runs/*"): self._guarded(self.run_control),
            ("POST", "/v1/agents/*"): self._guarded(self.agent_control),
            ("POST", "/v1/spam-tests"): self._guarded(self.spam_test_create),
            ("GET", "/v1/spam-tests/*"): self._guarded(self.spam_test_show),
            ("POST", "/v1/spam-tests/*"): self._guarded(self.spam_test_control),
        }

    @staticmethod
    def _guarded(handler: Handler) -> Handler:
        """400 for a bad request, 503 while a store the handler needs is down."""

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except BadRequest as exc:
                return Response.error(400, str(exc))
            except DependencyDown as exc:
                return Response.error(503, str(exc))

        return guarded

    @property
    def node_id(self) -> str:
        return self.node.runtime.config.node.id

    # ---- reads ----------------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        await self.node.dispatcher.refresh()
        return Response.json(self.node.snapshot())

    async def metrics(self, request: Request) -> Response:
        registry = self.node.runtime.metrics.registry
        return Response(200, generate_latest(registry), "text/plain; version=0.0.4")

    async def runs(self, request: Request) -> Response:
        filters = runs_filter(request)
        async with self.node.postgres.require().acquire() as conn:
            runs = await listing(conn, self.node_id, **filters)
        return Response.json({"node_id": self.node_id, "runs": runs})

    async def run_show(self, request: Request) -> Response:
        """A run by its id, or the newest run of a campaign by the campaign's id."""
        parts = _parts(request.path)
        if len(parts) != 3:
            raise BadRequest("expected GET /v1/runs/<run or campaign id>")
        ident = _uuid_at(request.path, 2, "run or campaign id")
        async with self.node.postgres.require().acquire() as conn:
            row = await intake.run_row(conn, ident)
            if row is not None and row["node_id"] == self.node_id:
                return Response.json(run_view(row))
            newest = await listing(conn, self.node_id, campaign_id=ident, limit=1)
        if newest:
            return Response.json(newest[0])
        return Response.error(404, f"no run or campaign {ident} on node {self.node_id}")

    async def spam_test_show(self, request: Request) -> Response:
        """A test's report, or a batch's: ``{"batch_id", "tests": [...]}``."""
        parts = _parts(request.path)
        if len(parts) != 3:
            raise BadRequest("expected GET /v1/spam-tests/<test or batch id>")
        ident = _uuid_at(request.path, 2, "test or batch id")
        async with self.node.postgres.require().acquire() as conn:
            mine = await nodes_of(conn, ident) == {self.node_id}
            reports = await show_tests(conn, ident) if mine else []
        if not reports:
            return Response.error(404, f"no spam test or batch {ident} on node {self.node_id}")
        if len(reports) == 1 and reports[0]["batch_id"] is None:
            return Response.json(reports[0])
        return Response.json({"batch_id": str(ident), "tests": reports})

    # ---- controls -------------------------------------------------------------------------
    async def run_control(self, request: Request) -> Response:
        parts = _parts(request.path)
        if len(parts) != 4 or parts[3] not in ("cancel", "pause", "resume"):
            raise BadRequest("expected POST /v1/runs/<uuid>/cancel|pause|resume")
        run_id = _uuid_at(request.path, 2, "run id")
        action = parts[3]
        by = f" ({request.client})" if request.client else ""
        try:
            return Response.json(
                await self.node.dispatcher.control(run_id, action, f"{action} by operator{by}")
            )
        except KeyError as exc:
            return Response.error(404, str(exc.args[0]))

    async def agent_control(self, request: Request) -> Response:
        parts = _parts(request.path)
        if len(parts) != 4 or not parts[2].isdigit() or parts[3] not in ("drain", "undrain"):
            raise BadRequest("expected POST /v1/agents/<number>/drain|undrain")
        try:
            return Response.json(self.node.dispatcher.drain(int(parts[2]), parts[3] == "drain"))
        except KeyError:
            return Response.error(404, f"no agent {parts[2]}")

    async def spam_test_create(self, request: Request) -> Response:
        """Queue a test (or a batch); 201 with its id(s), 422 when the rules refuse it."""
        specs = spam_test_specs(self.node_id, _json_body(request))
        try:
            async with self.node.postgres.require().acquire() as conn:
                ids, batch_id = await create_tests(
                    conn,
                    specs,
                    batch=len(specs) > 1,
                    create_companies="simulator" in self.node.runtime.config.model_fields_set,
                )
        except SpamTestRejected as exc:
            return Response.error(422, f"spam test rejected, nothing was queued: {exc}")
        if batch_id is not None:
            return Response.json(
                {"batch_id": str(batch_id), "test_ids": [str(i) for i in ids]}, 201
            )
        return Response.json({"test_id": str(ids[0])}, 201)

    async def spam_test_control(self, request: Request) -> Response:
        parts = _parts(request.path)
        if len(parts) != 4 or parts[3] != "cancel":
            raise BadRequest("expected POST /v1/spam-tests/<uuid>/cancel")
        test_id = _uuid_at(request.path, 2, "test or batch id")
        try:
            return Response.json(await self.node.spam_tests.cancel(test_id))
        except KeyError as exc:
            return Response.error(404, str(exc.args[0]))
