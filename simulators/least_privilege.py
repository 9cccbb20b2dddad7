"""A simulated node on least-privilege database accounts (docs/least-privilege.md).

`install` runs the shipped grants (``systemd/grants/postgresql.sql`` and ``mysql.sql``)
as the servers' administrators, through ``psql`` and ``mysql`` the way the document
tells an operator to, for a node instance's own role, user and databases (``<db>_lp``);
:meth:`Accounts.configure` points a node's configuration at them. Everything the node
runs then uses them: ``hanjulloctl db init``, the daemon and the CLI. Only the simulated
QTmsg agents keep the administrator's MySQL account (:meth:`Accounts.agent_env`): they
stand for the vendor's agents, which are installed with accounts of their own.

Used by ``simulators/demo.py --least-privilege`` and its integration test.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

from config.example import instance_databases

GRANTS = Path(__file__).resolve().parents[1] / "systemd" / "grants"
# The administrators: the local test servers' superuser and root, over TCP.
PSQL = ["psql", "-X", "-q", "-w", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"]
MYSQL = ["mysql", "-h", "127.0.0.1", "-u", "root"]
ADMIN_TIMEOUT_S = 60
# Names pasted into the grants: identifiers, so letters, digits and underscores only.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")


class LeastPrivilegeError(RuntimeError):
    """An administrator's statement failed; the message has the client's output."""


def render(path: Path, values: dict[str, str]) -> str:
    """The SQL file with its ``${NAME}`` placeholders filled in (what ``envsubst`` does)."""
    return string.Template(path.read_text(encoding="utf-8")).substitute(values)


@dataclass(frozen=True, slots=True)
class Accounts:
    """One node's least-privilege PostgreSQL role and MySQL user, and their databases."""

    user: str
    password: str
    database: str

    @classmethod
    def for_instance(cls, instance: int | None) -> Accounts:
        suffix = "test" if instance is None else str(instance)
        accounts = cls(
            f"hanjullo_lp_{suffix}",
            secrets.token_hex(12),
            f"{instance_databases(instance)[0]}_lp",
        )
        for name in (accounts.user, accounts.database):
            if not _NAME.fullmatch(name):
                raise LeastPrivilegeError(f"{name!r} is not a plain identifier")
        return accounts

    @property
    def values(self) -> dict[str, str]:
        return {"NODE_USER": self.user, "NODE_PASSWORD": self.password, "NODE_DB": self.database}

    def configure(self, text: str) -> str:
        """The node's TOML with ``[postgres]`` and ``[mysql]`` on these accounts."""
        wanted = {"user": self.user, "password": self.password, "database": self.database}
        out: list[str] = []
        section = ""
        for line in text.splitlines():
            header = re.fullmatch(r"\[([a-z_.]+)\]", line.strip())
            if header:
                if section in ("postgres", "mysql"):
                    out = _with_accounts(out, wanted)
                section = header.group(1)
            elif section in ("postgres", "mysql") and line.split("=")[0].strip() in wanted:
                continue
            out.append(line)
        if section in ("postgres", "mysql"):
            out = _with_accounts(out, wanted)
        return "\n".join(out) + "\n"

    def agent_env(self) -> dict[str, str]:
        """The simulator's environment: its agents on the administrator's MySQL account."""
        return {"HANJULLO_MYSQL__USER": "root", "HANJULLO_MYSQL__PASSWORD": ""}


def _with_accounts(lines: list[str], wanted: dict[str, str]) -> list[str]:
    """`lines` ends with a section's keys (and maybe blank lines): add ours after them."""
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    added = [f"{key} = {json.dumps(value)}" for key, value in wanted.items()]
    return lines[:end] + added + lines[end:]


def _admin(argv: list[str], sql: str) -> None:
    done = subprocess.run(
        argv, input=sql, capture_output=True, text=True, timeout=ADMIN_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise LeastPrivilegeError(f"{argv[0]} failed: {done.stderr.strip() or done.stdout}")


def drop(accounts: Accounts) -> None:
    """Remove the accounts and their databases (as the administrators)."""
    _admin(
        [*PSQL, "-v", "ON_ERROR_STOP=1"],
        f'DROP DATABASE IF EXISTS "{accounts.database}" WITH (FORCE);\n'
        f'DROP ROLE IF EXISTS "{accounts.user}";\n',
    )
    _admin(
        MYSQL,
        f"DROP DATABASE IF EXISTS `{accounts.database}`;\n"
        f"DROP USER IF EXISTS '{accounts.user}'@'127.0.0.1', '{accounts.user}'@'localhost';\n",
    )


def install(accounts: Accounts) -> None:
    """Run the shipped grants for `accounts` (after removing any left from a former run)."""
    drop(accounts)
    _admin([*PSQL, "-v", "ON_ERROR_STOP=1"], render(GRANTS / "postgresql.sql", accounts.values))
    _admin(MYSQL, render(GRANTS / "mysql.sql", accounts.values))
