"""Project-level consistency: environment.yml agrees with pyproject.toml; the CLI is wired."""

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from .conftest import ROOT, load_script, run_cli


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


def test_gpu_smoke_script_runs_at_toy_size_on_cpu():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_smoke.py"), "--tiny", "--device", "cpu",
                        "--steps", "1", "--tokens", "4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    values = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    for key in ("trainable_params", "train_images_per_s_live", "train_images_per_s_cache", "greedy_tokens_per_s",
                "beam3_tokens_per_s", "train_steps_per_s_live", "train_steps_per_s_cache", "memory_plan_gb_live",
                "encoder_tflops", "caption_random_features_images_per_s"):
        assert float(values[key]) > 0, key
    assert values["precision"].startswith("fp32: cpu")


def test_package_level_entry_points(gpt2_files):
    import hw3lib
    from hw3lib.attention.viewer import show_attention
    from hw3lib.core.errors import HW3Error
    from hw3lib.models.decoder_file import load_decoder

    tok = hw3lib.load_gpt2_tokenizer(*gpt2_files)
    assert tok.vocab_size == 50257 and tok.decode(tok.encode("a red circle")) == "a red circle"
    assert hw3lib.load_decoder is load_decoder and hw3lib.show_attention is show_attention
    assert hw3lib.HW3Error is HW3Error and sorted(hw3lib.__all__) == sorted(hw3lib._EXPORTS)
    with pytest.raises(AttributeError):
        hw3lib.no_such_name  # noqa: B018


def test_uv_is_given_the_indexes_links_and_constraints_pip_is_configured_with():
    vi = load_script("tools/venv_install.py")
    listed = "\n".join([
        "global.extra-index-url='file:///a/simple file:///b/simple'",
        "global.find-links='/wheels'",
        "global.constraint='/c.txt'",
        "global.index-url='https://global.example/simple'",
        "install.index-url='https://install.example/simple'",  # install wins over global
        ":env:.find-links='/env-wheels /more'",  # a PIP_* variable wins over both
        ":env:.disable-pip-version-check='1'",  # not an index option: not passed on
        "user.thing='x'",  # no such section: ignored
    ])
    config = vi.parse_config_list(listed)
    assert config["index-url"] == "https://install.example/simple"
    assert config["find-links"] == "/env-wheels /more"
    args = vi.uv_arguments(config)
    pairs = list(zip(args[::2], args[1::2], strict=True))
    assert pairs == [("--index-strategy", "unsafe-best-match"), ("--index-url", "https://install.example/simple"),
                     ("--extra-index-url", "file:///a/simple"), ("--extra-index-url", "file:///b/simple"),
                     ("--find-links", "/env-wheels"), ("--find-links", "/more"), ("--constraint", "/c.txt")]
    assert vi.uv_arguments(vi.parse_config_list(":env:.no-index='true'"))[-1] == "--no-index"
    assert vi.uv_arguments({}) == ["--index-strategy", "unsafe-best-match"]


def test_the_venv_recipe_installs_through_the_installer_script():
    make = (ROOT / "Makefile").read_text()
    recipe = make[make.index("$(VENV)/.installed:"):make.index("venv: $(VENV)/.installed")]
    assert "tools/venv_install.py" in recipe.splitlines()[0]  # a change to it rebuilds the venv
    assert "$(PY) tools/venv_install.py" in recipe


def test_the_installer_falls_back_to_pip_when_uv_fails(monkeypatch):
    vi = load_script("tools/venv_install.py")
    ran = []

    def run(cmd):
        ran.append(cmd)
        return "uv" not in Path(cmd[0]).name  # installing uv works; uv itself fails

    monkeypatch.setattr(vi, "run", run)
    monkeypatch.setattr(vi, "pip_config", lambda python: {"find-links": "/wheels"})
    assert vi.main([]) == 0
    assert [c[1:4] for c in ran[:1]] == [["-m", "pip", "install"]]  # uv, into the venv
    assert Path(ran[1][0]).name == "uv" and ran[1][-2:] == ["-e", ".[dev]"] and "/wheels" in ran[1]
    assert ran[2][1:3] == ["-m", "pip"] and ran[2][-2:] == ["-e", ".[dev]"]  # then pip, the same target
    ran.clear()
    monkeypatch.setattr(vi, "run", lambda cmd: ran.append(cmd) or False)  # nothing installs
    assert vi.main([]) == 1 and len(ran) == 2  # uv could not be had: pip tried once, and the failure returned


def test_the_installer_refuses_arguments_and_a_python_outside_a_venv(monkeypatch, capsys):
    vi = load_script("tools/venv_install.py")
    monkeypatch.setattr(vi, "run", lambda cmd: pytest.fail(f"ran {cmd}"))
    assert vi.main(["--user"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: venv_install.py takes no arguments (got '--user')"]
    monkeypatch.setattr(vi.sys, "prefix", vi.sys.base_prefix)
    assert vi.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a venv's python" in err[0]
