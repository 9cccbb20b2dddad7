"""Packaging: pyproject.toml reads without a deprecation warning, as the build backend reads it.

setuptools deprecated `project.license` as a TOML table (it warned on every install);
the SPDX string form it replaced it with needs setuptools >= 77 at build time.
"""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parents[2]


def test_the_build_backend_reads_pyproject_without_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "LicenseRef-Proprietary"
    assert dist.get_name() == "hanjullo-node"


def test_the_build_needs_a_setuptools_that_knows_spdx_licenses() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    setuptools = [r for r in map(Requirement, requires) if r.name == "setuptools"]
    assert setuptools, requires
    assert not setuptools[0].specifier.contains("76.9"), setuptools[0]
    assert setuptools[0].specifier.contains("77.0"), setuptools[0]
