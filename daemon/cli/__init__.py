"""`hanjulloctl`, the operator's command line: a client of the daemon's socket and of the
databases' contracts. The daemon's runtime never imports it, and it imports none of the
runtime (tests/unit/test_layout.py)."""
