"""The installed distribution's version: what the daemon reports in its status and records
for its node, and what `hanjulloctl --version` prints.

A Debian package sets it to the package's own version when it is built, so `dpkg -l`, the
status API and `--version` name the same build.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "hanjullo-node"


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
