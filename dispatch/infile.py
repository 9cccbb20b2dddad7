"""LOAD DATA LOCAL INFILE that serves only our own rows, from memory, to our own statement.

A MySQL server may answer *any* statement with a LOCAL INFILE request naming a file of its
choosing, and aiomysql/PyMySQL with ``local_infile=True`` open whatever it names (the
rogue server of ``simulators/rogue_mysql.py`` reads ``/proc/self/environ`` that way). So:

- Connections made here (:func:`create_pool`) tell the server they can send local data
  (the ``CLIENT_LOCAL_FILES`` capability, which the server requires for LOAD DATA LOCAL)
  but keep aiomysql's own ``local_infile`` switch off: aiomysql's handler refuses every
  request, on every statement, before it opens anything.
- :func:`load` runs one LOAD DATA statement itself: the statement names a random file name
  made for it, and the one request it then accepts is for exactly that name; the data is
  the caller's bytes, never a file. A request for any other name is refused, logged and
  the connection dropped (the server then aborts the statement: nothing is loaded).
- :func:`guarded` hands out the pool's connections and turns aiomysql's refusal of a
  request on any other statement (or at connect, in ``init_command``) into the same
  logged :class:`InfileRefused`, dropping that connection.

Every other MySQL connection of the node is made by ``dispatch.agent_tables`` with
``local_infile`` off and no ``CLIENT_LOCAL_FILES``. The hook used here is aiomysql's
``_execute_command`` / ``_read_packet`` / ``write_packet`` (the calls its own
``Connection.query`` and ``LoadLocalFile`` make), pinned by ``tests/unit/test_infile.py``
and the rogue-server tests.
"""

from __future__ import annotations

import secrets
from typing import Any

import aiomysql
import pymysql.err
import structlog
from pymysql.constants import CLIENT, COMMAND, CR
from pymysql.protocol import OKPacketWrapper

from config.model import MySQLSection
from dispatch import agent_tables

log = structlog.get_logger("infile")

# One data packet of the file (a batch of thousands of rows goes in a few). Below the
# protocol's 16 MiB - 1, where a payload of exactly that size would mean "continued".
MAX_PACKET = 1 << 20
# What aiomysql says when it refuses a request with local_infile off (it names no file).
_AIOMYSQL_REFUSAL = "Received LOAD_LOCAL packet but local_infile option is false"
# How much of a requested name goes into the log (the name is chosen by the server).
_NAME_LOGGED = 200


class InfileRefused(pymysql.err.OperationalError):
    """The server asked for a local file we did not offer; the connection was dropped."""


def file_name() -> str:
    """A name for one statement's data: random, so no server can guess it in advance."""
    return f"hanjullo-{secrets.token_hex(16)}.tsv"


async def create_pool(section: MySQLSection, maxsize: int) -> aiomysql.Pool:
    """A pool whose connections may run :func:`load` and answer nothing else."""
    return await agent_tables.create_pool(
        section, maxsize=maxsize, client_flag=CLIENT.LOCAL_FILES, local_infile=False
    )


def _refused(conn: aiomysql.Connection | None, asked: str, statement: str) -> InfileRefused:
    if conn is not None:
        conn.close()  # out of step with the server by now: never reuse it
    log.warning(
        "mysql server asked for a local file we did not offer; connection dropped",
        requested=asked[:_NAME_LOGGED],
        statement=statement[:60],
    )
    return InfileRefused(
        CR.CR_SERVER_LOST, f"LOCAL INFILE request refused ({asked[:_NAME_LOGGED]!r})"
    )


class guarded:  # lower case: used like a function, `async with guarded(pool) as conn`
    """A connection of a :func:`create_pool` pool. A file request on any statement but
    :func:`load`'s own (aiomysql refuses it without sending anything) drops the connection
    and raises :class:`InfileRefused`. (A class, not an async generator: a generator left
    suspended at shutdown would be finalised from another task.)"""

    def __init__(self, pool: aiomysql.Pool) -> None:
        self._acquire = pool.acquire()
        self._conn: aiomysql.Connection | None = None

    async def __aenter__(self) -> aiomysql.Connection:
        try:
            self._conn = await self._acquire.__aenter__()
        except RuntimeError as exc:
            # At connect (init_command): aiomysql has closed the connection already.
            raise _translated(exc, None) from exc
        return self._conn

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            if isinstance(exc, RuntimeError):
                raise _translated(exc, self._conn) from exc
        finally:
            await self._acquire.__aexit__(kind, exc, tb)  # back to the pool (closed or not)


def _translated(exc: RuntimeError, conn: aiomysql.Connection | None) -> BaseException:
    if _AIOMYSQL_REFUSAL not in str(exc):
        return exc
    return _refused(conn, "(a name aiomysql does not report)", "not a LOAD DATA")


async def load(conn: aiomysql.Connection, into: str, data: bytes) -> int:
    """Run ``LOAD DATA LOCAL INFILE <random name> <into>`` with `data` as the file's
    content; returns the rows loaded."""
    rows, _ = await load_counted(conn, into, data)
    return rows


async def load_counted(conn: aiomysql.Connection, into: str, data: bytes) -> tuple[int, int]:
    """:func:`load`, returning the rows loaded and the server's warning count (a LOCAL
    load truncates or drops a bad value with a warning, as IGNORE does).

    `into` is the rest of the statement (``INTO TABLE … (columns) SET …``), built by the
    caller from checked names only. Server errors are raised as PyMySQL raises them (the
    connection stays usable); anything else on the way drops the connection."""
    name = file_name()
    statement = f"LOAD DATA LOCAL INFILE {conn.escape(name)} {into}"
    await conn._execute_command(COMMAND.COM_QUERY, statement)
    try:
        first = await conn._read_packet()  # an ERR packet raises here, still in step
        if first.is_ok_packet():  # the server ran it without asking (nothing to send)
            return _finish(conn, first)
        if not first.is_load_local_packet():
            raise _refused(conn, "(a result set)", statement)
        asked = first.get_all_data()[1:].decode("utf-8", "replace")
        if asked != name:
            raise _refused(conn, asked, statement)
        view = memoryview(data)
        for start in range(0, len(data), MAX_PACKET):
            conn.write_packet(bytes(view[start : start + MAX_PACKET]))
            await conn._writer.drain()
        conn.write_packet(b"")  # the end of the file
        ok = await conn._read_packet()
    except pymysql.err.MySQLError:
        # Refused (dropped above), the server's ERR packet (the statement failed, the
        # session goes on) or a broken connection (aiomysql has closed it).
        raise
    except BaseException:
        conn.close()  # cancelled or broken mid-exchange: the session is out of step
        raise
    if not ok.is_ok_packet():
        conn.close()
        raise pymysql.err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC, "Commands Out of Sync")
    return _finish(conn, ok)


def _finish(conn: aiomysql.Connection, packet: Any) -> tuple[int, int]:
    ok = OKPacketWrapper(packet)
    conn.server_status = ok.server_status  # what the pool reads to see an open transaction
    return int(ok.affected_rows), int(ok.warning_count)
