"""The node configuration: one TOML file, overridable from ``HANJULLO_…`` variables.

Owns the shape of every setting and the per-field checks. Checks that span
several sections (an agent in two groups, duplicate devices…) live in
:mod:`config.checks` so that every problem can be reported at once.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.names import Carrier, GroupType, is_agent_table, is_mobile

DEFAULT_CONFIG_PATH = Path("/etc/hanjullo/node.toml")
DEFAULT_SOCKET_PATH = Path("/run/hanjullo/node.sock")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(value: float, info: ValidationInfo) -> float:
    # TOML and the environment both spell infinity ("inf"); a timer that never fires, or a
    # NaN that compares false with everything, is never what an operator meant.
    if not math.isfinite(value):
        raise ValueError(
            f"must be a finite number, not inf or nan; fix: e.g. {info.field_name} = 5"
        )
    return value


Seconds = Annotated[float, Field(gt=0), AfterValidator(_finite)]
# Zero allowed (e.g. "no delay", "off").
SecondsOrZero = Annotated[float, Field(ge=0), AfterValidator(_finite)]


def _as_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) else value


class NodeSection(_Section):
    id: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    name: str = ""
    timezone: str = "Asia/Seoul"


class PostgresSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    user: str = "postgres"
    password: SecretStr = SecretStr("")
    database: str = "test"
    connect_timeout_s: Seconds = 3.0


class MySQLSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password: SecretStr = SecretStr("")
    database: str = "test"
    connect_timeout_s: Seconds = 3.0


class RedisSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    db: int = Field(default=0, ge=0)
    password: SecretStr = SecretStr("")
    connect_timeout_s: Seconds = 2.0


class AgentRole(StrEnum):
    BULK = "bulk"
    TEST = "test"
    AUTH = "auth"


class AgentConfig(_Section):
    number: int = Field(ge=1, le=999)
    table: str
    admin: str
    role: AgentRole = AgentRole.BULK
    restart_command: str = ""

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not is_agent_table(value):
            raise ValueError(
                "must fully match SMSQ_SEND(_[0-9]{1,3})? (ASCII digits, nothing after them, "
                'no newline); fix: write the agent\'s table, e.g. table = "SMSQ_SEND_3"'
            )
        return value

    @field_validator("admin")
    @classmethod
    def _admin(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isascii() or not port.isdigit():
            raise ValueError('must be host:port; fix: e.g. admin = "127.0.0.1:9001"')
        if not 1 <= int(port) <= 65535:
            raise ValueError("port must be 1-65535")
        return value

    @property
    def admin_host(self) -> str:
        return self.admin.rpartition(":")[0].strip("[]")

    @property
    def admin_port(self) -> int:
        return int(self.admin.rpartition(":")[2])


class LineGroupConfig(_Section):
    name: str = Field(min_length=1, max_length=40)
    type: GroupType
    agents: list[int] = Field(min_length=1)


class ModemDriver(StrEnum):
    AT = "at"
    GAMMU = "gammu"


class ModemConfig(_Section):
    carrier: Carrier
    driver: ModemDriver = ModemDriver.AT
    device: str = Field(min_length=1)
    phone: str
    mcc_mnc: list[Annotated[str, BeforeValidator(_as_str)]] = Field(min_length=1)
    name: str = ""

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str) -> str:
        if not is_mobile(value):
            raise ValueError(
                "must be a mobile number, digits only: 01[016789] then 7-8 digits; "
                'fix: e.g. phone = "01012345678"'
            )
        return value

    @field_validator("mcc_mnc")
    @classmethod
    def _mcc_mnc(cls, value: list[str]) -> list[str]:
        for code in value:
            if re.fullmatch(r"[0-9]{5,6}", code) is None:
                raise ValueError(f'{code!r} is not an MCC-MNC; fix: e.g. mcc_mnc = ["45008"]')
        return value

    @property
    def label(self) -> str:
        """The operator-facing name of this phone, unique within the node."""
        return self.name or self.carrier.value


def _octal(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError as exc:
            raise ValueError('must be an octal mode such as "0660"') from exc
    return value


class SocketSection(_Section):
    """The status socket: who may connect (mode, group), who may act (operator_group),
    and the limits that keep slow clients from holding it (docs/status-api.md)."""

    path: Path = DEFAULT_SOCKET_PATH
    mode: Annotated[int, BeforeValidator(_octal), Field(ge=0, le=0o777)] = 0o660
    # The socket file's group: its members may read (GET).
    group: str = ""
    # Root and members of this group may also act (every POST); empty: root only.
    operator_group: str = ""
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # A whole request must arrive within this, however steadily it trickles in.
    request_timeout_s: Seconds = 10.0
    # An answer the client does not take within this is dropped with the connection.
    write_timeout_s: Seconds = 10.0
    # Connections open at once; the next is answered 503.
    max_connections: int = Field(default=32, ge=1, le=4096)


class ApiSection(_Section):
    """The two sockets nginx forwards the control plane's requests to (systemd/nginx/,
    docs/status-api.md): one that only reads, one that also acts. Both serve nginx's user
    alone (`proxy_user`, judged by SO_PEERCRED) and root; with no `proxy_user`, neither
    is opened."""

    # nginx's worker user (Debian: www-data); empty: no proxy sockets.
    proxy_user: str = ""
    # Every GET route, nothing else: what a fleet certificate may reach.
    read_socket: Path = Path("/run/hanjullo-api/read.sock")
    # Every route, controls included: what an operator certificate may reach.
    control_socket: Path = Path("/run/hanjullo-api/control.sock")
    # The group of both socket files (mode 0660) and of their directory (mode 0750): its
    # members are nginx's user and the daemon's own; empty: the daemon's group.
    group: str = ""

    @field_validator("proxy_user")
    @classmethod
    def _not_root(cls, value: str) -> str:
        if value in ("root", "0"):
            raise ValueError(
                "nginx's workers must not run as root, and root needs no proxy; fix: "
                'proxy_user = "www-data" (the user of nginx.conf\'s `user` directive)'
            )
        return value

    @field_validator("control_socket")
    @classmethod
    def _apart(cls, value: Path, info: ValidationInfo) -> Path:
        if value == info.data.get("read_socket"):
            raise ValueError(
                "the read and the control socket must differ (they grant different rights); "
                'fix: e.g. control_socket = "/run/hanjullo-api/control.sock"'
            )
        return value


class ControlPlaneSection(_Section):
    """The central registry this node heartbeats into, and the fleet commands' client
    certificate (docs/fleet.md). With no `dsn` the node heartbeats nowhere (a node of its
    own, or a fleet not set up yet) and has no `control-plane` component."""

    # The central PostgreSQL: on a node, its own login role (`hanjulloctl fleet add-node`);
    # for the fleet commands, one that may read every row. A secret: usually from
    # HANJULLO_CONTROL_PLANE__DSN in the EnvironmentFile.
    dsn: SecretStr = SecretStr("")
    # The https URL at which the control plane reaches this node's API through its nginx.
    advertise_url: str = ""
    # Bounded as the registry's node_heartbeat() bounds it (daemon/registry.py): the row's
    # staleness is three of these, so 0 would make a node stale at once and a day would
    # keep a dead node fresh for three.
    heartbeat_interval_s: Annotated[float, Field(ge=1, le=300), AfterValidator(_finite)] = 10.0
    # A heartbeat (connect and upsert) that takes longer than this has failed.
    timeout_s: Seconds = 5.0
    # The fleet commands' TLS: the CA of the nodes' server certificates, and the client
    # certificate and key they present (a fleet certificate may only read).
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @field_validator("dsn")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        # A URL: the fleet commands derive each node's DSN from it (its server, database
        # and options), and mask its password in messages by its URL syntax.
        dsn = value.get_secret_value()
        if dsn and re.match(r"(?i)postgres(ql)?://", dsn) is None:
            raise ValueError(
                "must be a postgresql:// URL (not libpq's key=value form); fix: e.g. "
                'dsn = "postgresql://hanjullo_cp@db.example:5432/registry" (the password in '
                "HANJULLO_CONTROL_PLANE__DSN, not the file)"
            )
        return value

    @field_validator("advertise_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if value and re.fullmatch(r"https://[^/\s]+(/\S*)?", value) is None:
            raise ValueError(
                "must be the https URL of this node's nginx, without a trailing path "
                'beyond its prefix; fix: e.g. advertise_url = "https://node7.example:8443"'
            )
        return value.rstrip("/")


class DispatchSection(_Section):
    poll_interval_s: Seconds = 5.0
    batch_size: int = Field(default=1000, ge=1, le=50_000)
    backlog_bound: int = Field(default=10_000, ge=1)
    pool_free_groups: bool = True
    lease_ttl_s: Seconds = 30.0
    lease_renew_s: Seconds = 10.0
    result_sync_interval_s: Seconds = 2.0
    result_horizon_h: Seconds = 48.0
    breaker_min_results: int = Field(default=20, ge=1)
    breaker_share: float = Field(default=0.5, gt=0, le=1)
    prune_after_days: Seconds = 90.0
    # The HMAC key of ai_training_logs.source_ref. Required by the daemon (config/loader.py
    # load_daemon_config), usually from HANJULLO_DISPATCH__TRAINING_SECRET; the CLI can do
    # without it, so only a value that is present and blank is wrong everywhere.
    training_secret: SecretStr = SecretStr("")

    @field_validator("training_secret")
    @classmethod
    def _training_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError(
                "is empty: source_ref would be an HMAC with an empty key, which anyone can "
                "recompute; fix: set HANJULLO_DISPATCH__TRAINING_SECRET to a long random "
                "value (e.g. openssl rand -hex 32) in the daemon's EnvironmentFile"
            )
        return value


class SupervisionSection(_Section):
    check_interval_s: Seconds = 2.0
    connect_timeout_s: Seconds = 1.0
    stuck_after_s: Seconds = 30.0
    backoff_initial_s: Seconds = 0.5
    backoff_max_s: Seconds = 5.0
    restart_min_interval_s: Seconds = 300.0
    stop_timeout_s: Seconds = 8.0


class SpamTestSection(_Section):
    grace_initial_s: Seconds = 25.0
    grace_min_s: Seconds = 6.0
    grace_max_s: Seconds = 45.0
    timeout_s: Seconds = 60.0
    # How often the engine looks at agent results and deadlines while tests are active.
    poll_interval_s: Seconds = 0.25
    # Recent receipt delays per carrier that the grace is computed from.
    grace_samples: int = Field(default=50, ge=5)
    canary_interval_s: SecondsOrZero = 0.0
    canary_text: str = "hanjullo canary"
    # The registered sender number canaries are sent from (required with an interval).
    canary_callback: str = ""
    # The web service times out every undecided result row this long after its test's
    # created_at (routes/spam-filter.ts, utils/spam-test-queue.ts): the node decides each
    # row of a web test by then, less the margin its own writes need (docs/spam-tests.md).
    web_window_s: Seconds = 60.0
    web_window_margin_s: Seconds = 3.0
    # The web's screens, billing and overall verdict do not know `device_error`: it is
    # written there as `timeout` (the exact verdict stays in the node's own table) unless
    # the web service has learned the word.
    web_device_error: bool = False


class PhonesSection(_Section):
    """Timings of the test-phone drivers and their managers."""

    command_timeout_s: Seconds = 2.0
    hang_after_timeouts: int = Field(default=3, ge=1)
    health_interval_s: Seconds = 5.0
    sweep_interval_s: Annotated[float, Field(ge=30.0), AfterValidator(_finite)] = 30.0
    absent_check_interval_s: Seconds = 0.5
    partial_timeout_s: Seconds = 120.0
    receipt_retention_days: Seconds = 30.0
    backoff_max_s: Seconds = 10.0


class ClockSection(_Section):
    """Where a settable test clock is kept; empty means the real clock."""

    file: Path | None = None


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    dir: Path | None = None


class CarrierNetworkConfig(_Section):
    latency_s: tuple[SecondsOrZero, SecondsOrZero] = (1.0, 4.0)
    # How the simulated carrier hands a handset a text GSM 7-bit cannot carry: "ucs2",
    # or "ksc5601" (DCS 0x84, EUC-KR, as Korean carriers do) when the text fits EUC-KR.
    korean_encoding: Literal["ucs2", "ksc5601"] = "ucs2"
    # The Subject of the MMS notification an LMS reaches a handset as: "subject" (the LMS's),
    # "empty" (the header present and blank) or "missing" (no header), as some MMSCs send it
    # (gammu tests/at-sms/40.dump); docs/test-phones.md, "Matching an LMS".
    mms_subject: Literal["subject", "empty", "missing"] = "subject"
    failure_rate: float = Field(default=0.02, ge=0, le=1)
    failure_codes: list[int] = [7, 8, 9]
    block_keywords: list[str] = []
    block_url_patterns: list[str] = []
    block_senders: list[str] = []

    @field_validator("latency_s")
    @classmethod
    def _latency(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if low < 0 or high < low:
            raise ValueError("must be [low, high] seconds with 0 <= low <= high")
        return value


def _default_networks() -> dict[Carrier, CarrierNetworkConfig]:
    # Shaped like reality: KT is the slow carrier (12-15 s), SKT and LG U+ are quick.
    return {
        Carrier.SKT: CarrierNetworkConfig(latency_s=(1.5, 3.5)),
        Carrier.KT: CarrierNetworkConfig(latency_s=(12.0, 15.0)),
        Carrier.LGU: CarrierNetworkConfig(latency_s=(2.0, 5.0)),
    }


class SimAgentsSection(_Section):
    rate_per_s: Seconds = 100.0
    poll_interval_s: Seconds = 0.2
    log_move_delay_s: SecondsOrZero = 2.0
    result_delay_s: tuple[SecondsOrZero, SecondsOrZero] = (0.2, 1.0)


class SimModemsSection(_Section):
    storage_capacity: int = Field(default=30, ge=1, le=255)
    smsc: str = "+821000000000"
    slow_delay_s: Seconds = 1.5
    # The `late` fault: replies this long after their command (past the drivers' timeout).
    late_delay_s: Seconds = 3.0
    # The modem family every simulated modem plays ("generic", "huawei", "quectel",
    # "simcom"); `profiles` overrides it per modem label.
    profile: Literal["generic", "huawei", "quectel", "simcom"] = "generic"
    profiles: dict[str, Literal["generic", "huawei", "quectel", "simcom"]] = {}


class SimulatorSection(_Section):
    control_socket: Path | None = None
    registered_senders: list[Annotated[str, BeforeValidator(_as_str)]] = []
    agents: SimAgentsSection = SimAgentsSection()
    modems: SimModemsSection = SimModemsSection()
    network: dict[Carrier, CarrierNetworkConfig] = Field(default_factory=_default_networks)
    seed: int = 0


class NodeConfig(BaseSettings):
    """The whole configuration of one node."""

    model_config = SettingsConfigDict(
        env_prefix="HANJULLO_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    node: NodeSection
    postgres: PostgresSection = PostgresSection()
    mysql: MySQLSection = MySQLSection()
    redis: RedisSection = RedisSection()
    agents: list[AgentConfig] = []
    line_groups: list[LineGroupConfig] = []
    modems: list[ModemConfig] = []
    socket: SocketSection = SocketSection()
    api: ApiSection = ApiSection()
    control_plane: ControlPlaneSection = ControlPlaneSection()
    dispatch: DispatchSection = DispatchSection()
    supervision: SupervisionSection = SupervisionSection()
    spam_tests: SpamTestSection = SpamTestSection()
    phones: PhonesSection = PhonesSection()
    clock: ClockSection = ClockSection()
    logging: LoggingSection = LoggingSection()
    simulator: SimulatorSection = SimulatorSection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init data; the environment overrides it.
        return (env_settings, init_settings)

    def agent(self, number: int) -> AgentConfig:
        for agent in self.agents:
            if agent.number == number:
                return agent
        raise KeyError(number)

    def group_of(self, number: int) -> LineGroupConfig | None:
        for group in self.line_groups:
            if number in group.agents:
                return group
        return None
