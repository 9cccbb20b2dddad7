"""`hanjulloctl --version` names the installed build: the distribution's version, which a
Debian package sets to its own (tests/packaging/deb-check.sh compares it with dpkg's)."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from config.model import NodeConfig
from daemon.cli.main import main
from daemon.runtime import Runtime


def test_version_prints_the_installed_distributions_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"hanjulloctl {version('hanjullo-node')}\n"


def test_the_daemon_reports_the_same_version_as_the_cli() -> None:
    config = NodeConfig.model_validate({"node": {"id": "node-01"}})
    assert Runtime(config=config).version == version("hanjullo-node")
