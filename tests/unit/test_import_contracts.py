"""The import-linter contracts keep up with the package.

A forbidden-modules contract only forbids what it names: a new top-level package that the
"domain is pure" contract does not list could be imported by ``domain`` unnoticed.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path
from typing import Any

import tradeloom

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def contract(name_start: str) -> dict[str, Any]:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    matching = [c for c in contracts if c["name"].startswith(name_start)]
    assert len(matching) == 1, f"expected one contract named {name_start!r}…, found {matching}"
    return matching[0]


def test_the_pure_domain_contract_forbids_every_other_top_level_module() -> None:
    ours = {f"tradeloom.{module.name}" for module in pkgutil.iter_modules(tradeloom.__path__)}
    forbidden = set(contract("domain is pure")["forbidden_modules"])

    missing = ours - forbidden - {"tradeloom.domain"}
    assert not missing, f"add to the 'domain is pure' contract in pyproject.toml: {sorted(missing)}"
    assert forbidden <= ours, f"contract names modules that no longer exist: {forbidden - ours}"
