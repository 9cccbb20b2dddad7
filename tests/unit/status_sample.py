"""A status document as the daemon serves it (docs/status-api.md), with Korean values, for
the CLI's views."""

from __future__ import annotations

from typing import Any

RUN_KO = "6f1c2a9e-0000-4000-8000-000000000001"
RUN_EN = "0b7d4c11-0000-4000-8000-000000000002"


def snapshot(uptime_s: float = 125.4) -> dict[str, Any]:
    groups = {n: f"bulk-{(n - 1) // 3 + 1}" for n in range(1, 10)} | {10: "test", 11: "auth"}
    return {
        "node": {
            "id": "node-seoul-1",
            "name": "서울 1호기",
            "version": "0.1.0",
            "started_at": "2026-12-02T01:00:00+00:00",
            "uptime_s": uptime_s,
            "clock": "2026-12-02T10:02:05+09:00",
            "clock_sync": {
                "synchronised": True,
                "max_error_s": 0.012,
                "offset_s": 0.0001,
                "detail": "adjtimex",
            },
        },
        "components": [
            {"name": n, "state": st, "reason": r, "since": "2026-12-02T01:00:01+00:00"}
            for n, st, r in (
                ("status-server", "running", "/run/hanjullo/node.sock"),
                ("postgres", "running", ""),
                ("redis", "running", ""),
                ("agent-monitor", "running", ""),
                ("dispatcher", "running", ""),
                ("modem:KT", "degraded", "degraded: no signal"),
            )
        ],
        "agents": [
            {
                "number": n,
                "table": f"SMSQ_SEND_{n}",
                "group": groups[n],
                "state": "stalled" if n == 5 else "ok",
                "reachable": n != 7,
                "waiting": 120 * n,
                "due": 100 * n,
                "oldest_waiting_s": 3.5,
                "in_flight": 40,
            }
            for n in range(1, 12)
        ],
        "line_groups": [
            {
                "name": "bulk-1",
                "type": "bulk",
                "agents": [1, 2, 3],
                "holder": {"company": "한줄로마케팅", "run_id": RUN_KO},
                "since": "2026-12-02T01:05:00+00:00",
            },
            {
                "name": "bulk-2",
                "type": "bulk",
                "agents": [4, 5, 6],
                "holder": {"company": "acme", "run_id": RUN_EN},
                "since": "2026-12-02T01:06:00+00:00",
            },
        ],
        "modems": [
            {
                "name": "KT",
                "carrier": "KT",
                "phone": "010****0002",
                "driver": "at",
                "state": "degraded",
                "reason": "no signal",
            }
        ],
        "runs": [
            {
                "run_id": RUN_KO,
                "company": "한줄로마케팅",
                "line_group": "bulk-1",
                "status": "sending",
                "target": 300000,
                "inserted": 120000,
                "success": 90000,
                "fail": 1200,
                "pending": 28800,
            },
            {
                "run_id": RUN_EN,
                "company": "acme",
                "line_group": "bulk-2",
                "status": "paused",
                "target": 5000,
                "inserted": 5000,
                "success": 10,
                "fail": 40,
                "pending": 4950,
            },
        ],
        "dispatch": {
            "handoff_failures": 0,
            "writer": {"role": "writer", "epoch": 3, "holder": None},
        },
        "spam_tests": {
            "queue": [],
            "active": [
                {
                    "test_id": "aa11bb22-0000-4000-8000-000000000003",
                    "company": "한줄로마케팅",
                    "status": "active",
                    "overall": None,
                    "carriers": {
                        "SKT": {"verdict": "pass"},
                        "KT": {"verdict": None},
                        "LGU": {"verdict": "blocked"},
                    },
                    "elapsed_s": 12.5,
                }
            ],
            "recent": [],
            "grace_s": {"SKT": 10.0, "KT": 25.0, "LGU": 10.0},
            "phones": [{"modem": "KT", "flagged": True}],
        },
    }
