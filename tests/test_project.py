"""Project-level consistency: environment.yml agrees with pyproject.toml; the CLI is wired."""

import tomllib

import yaml
from packaging.requirements import Requirement

from .conftest import ROOT, run_cli


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = env["dependencies"]
    assert "python=3.11" in deps and any(str(d).startswith("openjdk") for d in deps)
    assert py["requires-python"].startswith(">=3.11")
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert any(line.startswith("-e .") for line in pip), "the pip section must install the package"
    pinned = {Requirement(r).name.lower(): Requirement(r).specifier for r in py["dependencies"]}
    for line in pip:
        if line.startswith("-"):
            continue
        req = Requirement(line)
        assert req.name.lower() in pinned, f"{req.name} is in environment.yml but not pyproject.toml"
        assert req.specifier == pinned[req.name.lower()], f"{req.name}: {req.specifier} vs {pinned[req.name.lower()]}"


def test_cli_lists_subcommands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("demo-data", "demo-models", "export-decoder"):
        assert cmd in r.stdout
