"""The drivers' exception tree."""

from __future__ import annotations


class DriverError(Exception):
    """Base of every error the drivers raise."""


class PduError(DriverError, ValueError):
    """A PDU (or WAP push) that cannot be decoded; the message says what is wrong."""
