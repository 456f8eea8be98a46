"""The software's version has one home, ``lungct.__version__``: the code reads it there (the
Docker image has no pyproject.toml), and ``pyproject.toml``'s ``version``, which packaging
tools read, must say the same."""

from __future__ import annotations

import tomllib

from lungct import __version__
from tests.conftest import ROOT


def test_pyproject_version_is_the_package_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["version"] == __version__
