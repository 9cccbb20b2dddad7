"""Loading and checking the configuration, reporting every problem at once.

A problem names the field, the value found and the fix. Field checks come from
the pydantic models; checks across sections run on whatever items are valid, so
one bad table name does not hide an agent that sits in two groups.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource

from config.model import (
    AgentConfig,
    ApiSection,
    ControlPlaneSection,
    DispatchSection,
    LineGroupConfig,
    ModemConfig,
    NodeConfig,
    PhonesSection,
    SocketSection,
    SpamTestSection,
    SupervisionSection,
)
from config.names import Carrier, GroupType, is_callback_number


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{self.field} = {shown}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration {source}:\n{lines}")


_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "(missing)"})()
# Stands for the value of a secret field in a problem: the message must not show it.
_HIDDEN: Any = type("_Hidden", (), {"__repr__": lambda self: "(a secret, not shown)"})()
# The fields whose values a problem must not show (a DSN may carry a password), by their
# own name: a section may be validated on its own (load_control_plane). training_secret's
# only problem is a blank one, which is worth showing.
SECRET_FIELDS = frozenset({"dsn"})


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _loc_str(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lookup(raw: Any, loc: Iterable[int | str]) -> Any:
    node = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node


def _field_problems(raw: dict[str, Any], error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "required; fix: add it to the file"
        elif item["type"] == "extra_forbidden":
            message = "unknown setting; fix: remove it or check its spelling"
        where = _loc_str(loc)
        value = _HIDDEN if loc and loc[-1] in SECRET_FIELDS else _lookup(raw, loc)
        problems.append(Problem(where, value, message))
    return problems


_M = TypeVar("_M", bound=BaseModel)


def _valid_items(raw: Any, model: type[_M]) -> list[tuple[int, _M]]:
    if not isinstance(raw, list):
        return []
    valid = []
    for index, item in enumerate(raw):
        try:
            valid.append((index, model.model_validate(item)))
        except ValidationError:
            continue
    return valid


def _valid_section(raw: Any, model: type[_M]) -> _M | None:
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError:
        return None


def _duplicates(
    section: str, field: str, items: list[tuple[int, Any]], key: str, fix: str
) -> list[Problem]:
    counts = Counter(getattr(item, key) for _, item in items)
    return [
        Problem(f"{section}[{index}].{field}", getattr(item, key), f"duplicate; fix: {fix}")
        for index, item in items
        if counts[getattr(item, key)] > 1
    ]


def cross_problems(raw: dict[str, Any]) -> list[Problem]:
    """Problems that span sections, computed over the items that are valid on their own."""
    agents = _valid_items(raw.get("agents", []), AgentConfig)
    groups = _valid_items(raw.get("line_groups", []), LineGroupConfig)
    modems = _valid_items(raw.get("modems", []), ModemConfig)
    problems: list[Problem] = []

    problems += _duplicates("agents", "number", agents, "number", "give each agent its own number")
    problems += _duplicates("agents", "table", agents, "table", "give each agent its own table")
    problems += _duplicates(
        "agents", "admin", agents, "admin", "give each agent its own admin port"
    )
    problems += _duplicates("line_groups", "name", groups, "name", "name each group uniquely")
    problems += _duplicates("modems", "device", modems, "device", "one modem per device")
    problems += _duplicates("modems", "phone", modems, "phone", "one modem per phone number")
    problems += _duplicates(
        "modems",
        "name",
        [(i, m) for i, m in modems if m.name],
        "name",
        "name each modem of a pool uniquely",
    )

    # Numbers of every agent entry, valid or not: a bad table name must not make
    # its agent look missing from the groups that list it.
    raw_agents = raw.get("agents", [])
    membership: dict[int, list[str]] = {
        item["number"]: []
        for item in (raw_agents if isinstance(raw_agents, list) else [])
        if isinstance(item, dict) and isinstance(item.get("number"), int)
    }
    for index, group in groups:
        for number in group.agents:
            if number not in membership:
                problems.append(
                    Problem(
                        f"line_groups[{index}].agents",
                        group.agents,
                        f"agent {number} is not configured; fix: add an [[agents]] entry "
                        f"with number = {number} or remove it from the group",
                    )
                )
            else:
                membership[number].append(group.name)
    for index, agent in agents:
        homes = membership.get(agent.number, [])
        if len(homes) != 1:
            where = "no group" if not homes else f"groups {', '.join(homes)}"
            problems.append(
                Problem(
                    f"agents[{index}].number",
                    agent.number,
                    f"agent is in {where}; fix: list it in exactly one [[line_groups]] entry",
                )
            )

    for kind in (GroupType.TEST, GroupType.AUTH):
        count = sum(1 for _, g in groups if g.type == kind)
        if count != 1:
            problems.append(
                Problem(
                    "line_groups.type",
                    kind.value,
                    f"{count} {kind.value} groups; fix: configure exactly one "
                    f'[[line_groups]] with type = "{kind.value}"',
                )
            )

    if isinstance(raw.get("modems", []), list) or "modems" not in raw:
        present = {m.carrier for _, m in modems}
        for carrier in Carrier:
            if carrier not in present:
                problems.append(
                    Problem(
                        "modems.carrier",
                        carrier.value,
                        f"no test phone for {carrier.value}; fix: add a [[modems]] entry "
                        f'with carrier = "{carrier.value}"',
                    )
                )

    problems += _timing_problems(raw)
    problems += _api_problems(raw)
    return problems


def _api_problems(raw: dict[str, Any]) -> list[Problem]:
    """The proxy's sockets need a directory of their own: the daemon gives it `[api] group`
    and mode 0750, which would lock the status socket's readers out of a shared one."""
    api = _valid_section(raw.get("api"), ApiSection)
    status = _valid_section(raw.get("socket"), SocketSection)
    if api is None or status is None or not api.proxy_user:
        return []
    return [
        Problem(
            f"api.{name}",
            str(path),
            f"is in the status socket's directory {status.path.parent}; fix: give the "
            "proxy's sockets a directory of their own, e.g. /run/hanjullo-api/ (the "
            "daemon gives it [api] group)",
        )
        for name, path in (("read_socket", api.read_socket), ("control_socket", api.control_socket))
        if path.parent == status.path.parent
    ]


def _timing_problems(raw: dict[str, Any]) -> list[Problem]:
    problems = []
    dispatch = _valid_section(raw.get("dispatch"), DispatchSection)
    if dispatch and dispatch.lease_renew_s >= dispatch.lease_ttl_s:
        problems.append(
            Problem(
                "dispatch.lease_renew_s",
                dispatch.lease_renew_s,
                f"must be shorter than dispatch.lease_ttl_s ({dispatch.lease_ttl_s}); "
                "fix: renew at most every third of the TTL",
            )
        )
    spam = _valid_section(raw.get("spam_tests"), SpamTestSection)
    if spam:
        if spam.grace_min_s > spam.grace_max_s:
            problems.append(
                Problem(
                    "spam_tests.grace_min_s",
                    spam.grace_min_s,
                    f"exceeds spam_tests.grace_max_s ({spam.grace_max_s}); fix: min <= max",
                )
            )
        if not spam.grace_min_s <= spam.grace_initial_s <= spam.grace_max_s:
            problems.append(
                Problem(
                    "spam_tests.grace_initial_s",
                    spam.grace_initial_s,
                    "must lie within [grace_min_s, grace_max_s]",
                )
            )
        # A web test must leave room for the minimum grace and the storage read after it
        # (daemon/spamtest/sending.py: window_too_short), or no web test is ever sent.
        room = spam.web_window_s - spam.web_window_margin_s
        if room < spam.grace_min_s + 12.0:
            problems.append(
                Problem(
                    "spam_tests.web_window_margin_s",
                    spam.web_window_margin_s,
                    f"leaves {room:g}s of the web's {spam.web_window_s:g}s window, less than "
                    f"grace_min_s ({spam.grace_min_s:g}) + 12 s for the storage read and the "
                    "send: no web test could be judged blocked, none would be sent; fix: a "
                    "smaller margin or grace_min_s",
                )
            )
        if spam.timeout_s <= spam.grace_min_s:
            problems.append(
                Problem(
                    "spam_tests.timeout_s",
                    spam.timeout_s,
                    f"must be longer than spam_tests.grace_min_s ({spam.grace_min_s})",
                )
            )
        if spam.canary_interval_s > 0 and not is_callback_number(spam.canary_callback):
            problems.append(
                Problem(
                    "spam_tests.canary_callback",
                    spam.canary_callback,
                    "canaries need a registered sender number; "
                    'fix: e.g. canary_callback = "0212345678", or canary_interval_s = 0',
                )
            )
    supervision = _valid_section(raw.get("supervision"), SupervisionSection)
    if supervision:
        if supervision.backoff_initial_s > supervision.backoff_max_s:
            problems.append(
                Problem(
                    "supervision.backoff_initial_s",
                    supervision.backoff_initial_s,
                    f"exceeds supervision.backoff_max_s ({supervision.backoff_max_s})",
                )
            )
        if supervision.connect_timeout_s >= supervision.check_interval_s * 5:
            problems.append(
                Problem(
                    "supervision.connect_timeout_s",
                    supervision.connect_timeout_s,
                    "is far longer than supervision.check_interval_s; fix: lower it",
                )
            )
    phones = _valid_section(raw.get("phones"), PhonesSection)
    if phones and phones.health_interval_s < phones.command_timeout_s:
        problems.append(
            Problem(
                "phones.health_interval_s",
                phones.health_interval_s,
                f"is shorter than phones.command_timeout_s ({phones.command_timeout_s})",
            )
        )
    return problems


def read_raw(path: Path) -> dict[str, Any]:
    """The TOML file merged with ``HANJULLO_…`` overrides, before validation."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(
            str(path),
            [Problem("--config", str(path), "no such file; fix: pass --config PATH")],
        ) from exc
    except PermissionError as exc:
        raise ConfigError(
            str(path),
            [
                Problem(
                    "--config", str(path), "permission denied; fix: run as a user who can read it"
                )
            ],
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            str(path), [Problem("(file)", str(path), f"not valid TOML: {exc}")]
        ) from exc
    env = EnvSettingsSource(NodeConfig)()
    return _deep_merge(data, env)


def validate(raw: dict[str, Any], source: str = "(inline)") -> NodeConfig:
    problems: list[Problem] = []
    config: NodeConfig | None = None
    try:
        config = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        problems += _field_problems(raw, exc)
    problems += cross_problems(raw)
    if problems or config is None:
        raise ConfigError(source, problems)
    return config


def load_config(path: Path) -> NodeConfig:
    return validate(read_raw(path), str(path))


def load_control_plane(path: Path) -> ControlPlaneSection:
    """Only `[control_plane]` of the file (with its ``HANJULLO_CONTROL_PLANE__…``
    overrides): what the fleet commands need, on a node or on a control plane's machine,
    whose file has no agents, groups or phones."""
    raw = read_raw(path)
    section = raw.get("control_plane", {})
    try:
        return ControlPlaneSection.model_validate(section)
    except ValidationError as exc:
        problems = [
            Problem(f"control_plane.{p.field}", p.value, p.message)
            for p in _field_problems(section, exc)
        ]
        raise ConfigError(str(path), problems) from exc


def daemon_problems(config: NodeConfig) -> list[Problem]:
    """What the daemon needs beyond a valid file: settings the CLI can do without (an
    operator's shell does not see the daemon's EnvironmentFile)."""
    problems = []
    if not config.dispatch.training_secret.get_secret_value():
        problems.append(
            Problem(
                "dispatch.training_secret",
                _MISSING,
                "the daemon needs it as the HMAC key of ai_training_logs.source_ref; fix: set "
                "HANJULLO_DISPATCH__TRAINING_SECRET to a long random value (e.g. openssl "
                "rand -hex 32) in the daemon's EnvironmentFile (systemd/INSTALL.md)",
            )
        )
    plane = config.control_plane
    if plane.dsn.get_secret_value() and not plane.advertise_url:
        problems.append(
            Problem(
                "control_plane.advertise_url",
                _MISSING,
                "a node that heartbeats into the registry must say where the control plane "
                "reaches it; fix: advertise_url = the https URL of this node's nginx "
                '(e.g. "https://node7.example:8443"), or remove control_plane.dsn',
            )
        )
    return problems


def load_daemon_config(path: Path) -> NodeConfig:
    """The configuration as the daemon may run with it (also on reload)."""
    config = load_config(path)
    problems = daemon_problems(config)
    if problems:
        raise ConfigError(str(path), problems)
    return config
