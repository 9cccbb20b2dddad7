"""The test PKI lives in simulators/pki.py since `hanjullo-sim fleet` makes one too; the
tests keep importing it from here."""

from simulators.pki import VALID_BEFORE, VALID_FOR, Authority, Issued, name

__all__ = ["VALID_BEFORE", "VALID_FOR", "Authority", "Issued", "name"]
