"""The demo on the documented least-privilege grants (issue 14, acceptance 4).

`simulators/demo.py --least-privilege` creates the node's PostgreSQL role and MySQL user
with the shipped SQL (systemd/grants/, the same files docs/least-privilege.md tells an
operator to run) and runs `db init`, the daemon and the CLI on them: a spam test and a
campaign, end to end. The test then checks, as the administrators, that the accounts are
what the document says and that the node's data went through them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from simulators import least_privilege
from simulators.harness import current_instance
from tests.integration.helpers import pg_fetch

DEMO_TIMEOUT_S = 400


@pytest.fixture
def accounts() -> Iterator[least_privilege.Accounts]:
    names = least_privilege.Accounts.for_instance(current_instance())
    try:
        yield names
    finally:
        least_privilege.drop(names)


def admin_mysql(database: str) -> pymysql.Connection:  # type: ignore[type-arg]
    return pymysql.connect(host="127.0.0.1", user="root", password="", database=database)


@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)  # a spam test and a campaign at the demo's pace
def test_the_demo_runs_on_the_documented_least_privilege_grants(
    tmp_path: Path, accounts: least_privilege.Accounts
) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "simulators.demo", "--least-privilege", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert f"least-privilege accounts: PostgreSQL role and MySQL user {accounts.user}" in (
        demo.stderr
    )
    (campaign,) = [line for line in demo.stderr.splitlines() if "==> campaign " in line]
    outcome = re.search(r": completed, (\d+) delivered, (\d+) failed", campaign)
    assert outcome is not None, campaign
    assert int(outcome[1]) + int(outcome[2]) == 997 and int(outcome[1]) > 900  # the carriers
    config = (tmp_path / "node.toml").read_text()
    assert 'user = "root"' not in config and 'user = "postgres"' not in config

    # PostgreSQL: a plain login role; `db init` ran as it (it owns every node table).
    ((superuser, createdb, createrole),) = pg_fetch(
        "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = $1",
        accounts.user,
        database=accounts.database,
    )
    assert (superuser, createdb, createrole) == (False, False, False)
    owners = pg_fetch(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname IN ('public', 'hanjullo')",
        database=accounts.database,
    )
    assert owners == [(accounts.user,)]
    ((acme,),) = pg_fetch(
        "SELECT id::text FROM companies WHERE company_code = 'acme'", database=accounts.database
    )
    runs = pg_fetch("SELECT status, inserted_count FROM hanjullo.runs", database=accounts.database)
    assert runs == [("completed", 997)]
    tests = pg_fetch("SELECT status FROM hanjullo.spam_tests", database=accounts.database)
    assert tests == [("completed",)]

    # MySQL: exactly the documented privileges, on the node's database only; no FILE.
    conn = admin_mysql(accounts.database)
    try:
        with conn.cursor() as cur:
            for host in ("127.0.0.1", "localhost"):
                cur.execute(f"SHOW GRANTS FOR '{accounts.user}'@'{host}'")
                grants = sorted(row[0].split(" TO ")[0] for row in cur.fetchall())
                assert grants == [
                    "GRANT SELECT, INSERT, DELETE, CREATE ON `" + accounts.database + "`.*",
                    "GRANT USAGE ON *.*",
                ]
            cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_%'")
            tables = [row[0] for row in cur.fetchall()]
            union = " UNION ALL ".join(
                # The campaign's rows carry the company's companies.id; the spam test's
                # its company as given.
                f"SELECT app_etc1 FROM `{t}` WHERE app_etc2 IN ('{acme}', 'acme')"
                for t in tables
            )
            cur.execute(f"SELECT COUNT(*) FROM ({union}) AS rows_of_acme")
            (rows,) = cur.fetchone()  # type: ignore[misc]
    finally:
        conn.close()
    assert rows >= 997 + 3  # the campaign and the spam test's rows (one per phone)

    # What the demo did not do, as the node user: the locking read and the delete of a
    # pull-back (pause, cancel) and a failover move need no UPDATE.
    mysql_section = tomllib.loads(config)["mysql"]  # the password the demo made
    node = pymysql.connect(
        host="127.0.0.1",
        user=mysql_section["user"],
        password=mysql_section["password"],
        database=mysql_section["database"],
    )
    try:
        with node.cursor() as cur:
            node.begin()
            cur.execute("SELECT seqno FROM SMSQ_SEND_1 WHERE rsv1 = '9' FOR UPDATE")
            cur.execute("DELETE FROM SMSQ_SEND_1 WHERE rsv1 = '9'")
            node.rollback()
            with pytest.raises(pymysql.err.OperationalError, match="UPDATE command denied"):
                cur.execute("UPDATE SMSQ_SEND_1 SET rsv1 = '9' WHERE rsv1 = '9'")
    finally:
        node.close()
