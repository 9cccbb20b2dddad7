"""`hanjulloctl pdu decode HEX [--json]`: one PDU as +CMGL/+CMGR print it, decoded.

Needs no configuration. A WAP-push part that carries a whole MMS notification is
decoded down to the notification; a push of another content type (a Service
Indication, …) is shown as a `wap-push`; a concatenated part is shown as that part.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from daemon.cli.common import CtlError, Subparsers
from drivers import pdu, wap
from drivers.errors import PduError


def describe(hex_pdu: str) -> dict[str, Any]:
    decoded = pdu.decode(hex_pdu)
    if isinstance(decoded, pdu.StatusReport):
        return {
            "kind": pdu.Kind.STATUS_REPORT.value,
            "sender": decoded.recipient,
            "text": "",
            "timestamp": decoded.timestamp.isoformat(),
            "encoding": None,
            "concat": None,
            "reference": decoded.reference,
            "discharge": decoded.discharge.isoformat(),
            "status": decoded.status,
            "smsc": decoded.smsc,
        }
    out: dict[str, Any] = {
        "kind": pdu.Kind.SMS.value,
        "sender": decoded.sender,
        "text": decoded.text,
        "timestamp": decoded.timestamp.isoformat(),
        "encoding": decoded.encoding.value,
        "concat": decoded.concat.as_json() if decoded.concat else None,
        "smsc": decoded.smsc,
    }
    if decoded.ports is not None:
        out["ports"] = {"destination": decoded.ports[0], "source": decoded.ports[1]}
    if decoded.is_wap_push:
        out["text"] = ""
        whole = decoded.concat is None or decoded.concat.total == 1
        if whole or decoded.concat.seq == 1:  # type: ignore[union-attr]
            # The push's own headers (its content type) are in its first part.
            out["content_type"] = wap.content_type(decoded.data)
            if out["content_type"] != wap.MMS_CONTENT_TYPE:
                out["kind"] = pdu.Kind.WAP_PUSH.value
                return out
        out["kind"] = pdu.Kind.MMS_NOTIFICATION.value
        note: wap.MmsNotification | None = None
        if decoded.concat is None or decoded.concat.total == 1:
            note = wap.decode_push(decoded.data)
        elif decoded.concat.seq == 1:
            # The first part holds the headers that fit in it; later parts need the others.
            out["note"] = "first part of a multi-part WAP push; join all parts to decode"
        out.update(
            subject=note.subject if note else None,
            size=note.size if note else None,
            location=note.location if note else None,
            transaction_id=note.transaction_id if note else None,
        )
        if note and note.sender:
            out["sender"] = note.sender.split("/TYPE=")[0]
    return out


def render(info: dict[str, Any]) -> str:
    lines = [f"{key:<15}{value}" for key, value in info.items() if key != "text"]
    if info.get("text"):
        lines += ["", str(info["text"])]
    return "\n".join(lines)


def cmd_pdu_decode(args: argparse.Namespace) -> int:
    try:
        info = describe(args.hex)
    except PduError as exc:
        raise CtlError(f"cannot decode PDU: {exc}") from exc
    print(json.dumps(info, ensure_ascii=False) if args.json else render(info))
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    pdu_parser = sub.add_parser("pdu", parents=[common], help="decode PDUs (no config needed)")
    pdu_sub = pdu_parser.add_subparsers(dest="pdu_command", required=True)
    decode = pdu_sub.add_parser(
        "decode", parents=[common], help="decode one PDU as +CMGL/+CMGR print it (SMSC included)"
    )
    decode.add_argument("hex")
    decode.add_argument("--json", action="store_true")
    decode.set_defaults(func=cmd_pdu_decode)
