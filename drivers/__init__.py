"""Test-phone drivers and the PDU codec. Never imports dispatch or daemon."""
