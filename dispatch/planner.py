"""From a page of recipients to rows per agent table: pure decisions of the handoff.

Which pages must be looked up in the agent tables before they are inserted (the crash
window), how much room each agent has under its backlog bound, and how a page is spread
over the agents so the room left ends as even as it can. Reads and writes nothing: the
engine (`daemon/dispatcher/handoff.py`) brings the page and the counts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from dispatch.guards import Fields
from dispatch.handoff import RowValues, RunRowKey


def spread(room: Mapping[int, int], count: int) -> dict[int, int]:
    """How many of `count` rows each agent takes so the room left ends as even as it
    can: the agents with the most room are filled down to the next one's level, and so
    on (ties: the lower number first). Never more than an agent's room."""
    take = dict.fromkeys(room, 0)
    left = min(count, sum(max(0, r) for r in room.values()))
    while left > 0:
        free = {n: room[n] - take[n] for n in sorted(room) if room[n] - take[n] > 0}
        top = max(free.values())
        tops = [n for n, v in free.items() if v == top]
        below = max((v for v in free.values() if v < top), default=0)
        step = min(top - below, max(1, left // len(tops)))
        for number in tops:
            given = min(step, left)
            take[number] += given
            left -= given
            if left == 0:
                break
    return take


def room_left(bound: int, tables: Mapping[int, str], waiting: Mapping[str, int]) -> dict[int, int]:
    """Rows each agent may still take under `bound`; an agent whose waiting rows were
    never counted has none (it is counted before anything is given to it)."""
    return {n: max(0, bound - waiting.get(t, bound)) for n, t in tables.items()}


def needs_lookup(first_seq: int, pulled: bool, verify_until: int, after: int) -> bool:
    """Whether a page (following seq `after`) may already be (partly) in the agent tables
    and must be looked up before inserting: a page of pulled-back recipients, a page at or
    below the highest seq ever written ahead of its checkpoint (`verify_until`: a crash or
    a failed batch in between), or the first page of a run checkpointed before
    ``verify_until`` existed."""
    legacy = verify_until == 0 and after > 0
    return legacy or pulled or first_seq <= verify_until


@dataclass(frozen=True, slots=True)
class RunRowFields:
    """What every agent row of a run repeats."""

    callback: str
    msg_type: str  # the agent's one-letter code
    key: RunRowKey  # app_etc1 (the campaign), bill_id (the run)
    company: str  # app_etc2


# Attachments an agent row holds (file_name1..3, as the web writes them; 4 and 5 it never does).
ROW_FILES = 3


@dataclass(slots=True)
class Plan:
    """One page, planned: its size (recipients found already inserted included), its last
    seq, its seqs when it is a page of pulled-back recipients, the rows per table, and its
    first seq (with the last, the range its ledger entries name)."""

    size: int
    last_seq: int
    pulled_seqs: list[int] | None
    rows: dict[str, list[RowValues]] = field(default_factory=dict)
    first_seq: int = 0


def _files(attachments: Sequence[str] | None) -> tuple[str, str, str]:
    """file_name1..3: the first three attachments, ``''`` for each one missing."""
    first = [*(attachments or ())[:ROW_FILES], "", "", ""]
    return first[0], first[1], first[2]


def plan_page(
    page: Sequence[Fields],
    found: Collection[str],
    room: Mapping[int, int],
    tables: Mapping[int, str],
    run: RunRowFields,
) -> Plan:
    """Rows for the page's recipients (seq, number, message_text, subject, attachments,
    pulled) except the numbers in `found`, spread over the agents by their `room`; the
    agents with the most room left take the most rows. A row is what the web service
    writes (sq:937-950): no subject or no image is ``''``, never NULL."""
    app_etc1, bill_id = run.key.params
    rows: list[RowValues] = [
        (
            r["number"],
            run.callback,
            r["message_text"],
            run.msg_type,
            r["subject"] or "",
            *_files(r["attachments"]),
            app_etc1,
            run.company,
            bill_id,
        )
        for r in page
        if r["number"] not in found
    ]
    pulled = bool(page[0]["pulled"])
    plan = Plan(
        size=len(page),
        last_seq=page[-1]["seq"],
        pulled_seqs=[r["seq"] for r in page] if pulled else None,
        first_seq=page[0]["seq"],
    )
    start = 0
    for number, count in spread(room, len(rows)).items():
        if count:
            plan.rows[tables[number]] = rows[start : start + count]
        start += count
    return plan
