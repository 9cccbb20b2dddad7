"""Configuration edits in tests go through the configuration model, never `str.replace`.

A text replacement silently does nothing once the example's wording changes; here the
example is parsed, the changes are merged into it, the result is validated by the same
model the daemon uses (`config.loader.validate`: unknown keys and bad values fail loudly),
and only then written back as TOML.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tomli_w

from config.loader import validate

Edit = Callable[[str], str]


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def edit(text: str, change: Callable[[dict[str, Any]], None]) -> str:
    """Apply `change` to the parsed configuration (for arrays of tables such as
    ``agents`` or ``modems``), validate, and return the new TOML."""
    raw = tomllib.loads(text)
    change(raw)
    validate(raw, "a test's configuration edit")
    return tomli_w.dumps(raw)


def settings(text: str, changes: Mapping[str, Any]) -> str:
    """Merge nested `changes` (``{"dispatch": {"batch_size": 300}}``) into the TOML text."""
    raw = _merge(tomllib.loads(text), changes)
    validate(raw, "a test's configuration edit")
    return tomli_w.dumps(raw)


def invalid(text: str, key: Sequence[str | int], value: Any) -> str:
    """Set one existing key to a value the model should refuse, *without* validating: for
    tests of validation itself. `key` is a path (``("agents", 0, "table")``); a key the
    example no longer has fails here instead of leaving the test checking nothing."""
    raw = tomllib.loads(text)
    parent: Any = raw
    for step in key[:-1]:
        parent = parent[step]
    last = key[-1]
    if isinstance(parent, dict) and last not in parent:
        raise KeyError(f"the configuration has no {'.'.join(map(str, key))} to make invalid")
    if isinstance(parent, list) and not isinstance(last, int):
        raise KeyError(f"{'.'.join(map(str, key))}: {last!r} is not an index")
    parent[last] = value
    return tomli_w.dumps(raw)


def overrides(*steps: Mapping[str, Any] | Edit) -> Edit:
    """An `overrides` callable for `SimulatedNode`: settings and edits applied in order."""

    def apply(text: str) -> str:
        for step in steps:
            text = step(text) if callable(step) else settings(text, step)
        return text

    return apply
