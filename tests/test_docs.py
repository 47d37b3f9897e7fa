"""Numbers quoted in README.md and docs/ are generated blocks of figures/summary.json, and no committed
result or document carries a machine's path."""

import json
import re
import subprocess

import pytest

from hw3lib.app.summary import QUOTES, fill_quotes, refresh_quotes
from hw3lib.core.errors import HW3Error

from .conftest import ROOT, load_script

SUMMARY = ROOT / "figures" / "summary.json"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:tmp|home|root|work|Users|mnt|private/var|var/folders)/")


def test_quoted_numbers_equal_the_summary():
    doc = json.loads(SUMMARY.read_text())
    quoted = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        quoted += re.findall(r"<!-- quote: (\w+)", text)
        assert fill_quotes(text, doc, str(page)) == text, \
            f"{page.name}: a quoted number differs from figures/summary.json (make report rewrites the blocks)"
    assert "headline" in quoted and set(quoted) <= set(QUOTES)


def test_a_changed_number_is_rewritten(tmp_path):
    """refresh_quotes puts summary.json's numbers back into a page whose quoted number was edited."""
    doc = json.loads(SUMMARY.read_text())
    page = tmp_path / "page.md"
    good = fill_quotes("intro\n<!-- quote: headline (generated) -->\n<!-- /quote -->\noutro\n", doc)
    best = doc["p2"]["best"]["objects"]["exact"]["share"]
    assert f"{best * 100:.1f}%" in good and good.startswith("intro\n") and good.endswith("outro\n")
    page.write_text(good.replace(f"{best * 100:.1f}%", "99.9%"))
    assert refresh_quotes([page], doc) == [page] and page.read_text() == good
    assert refresh_quotes([page], doc) == []  # nothing left to change
    with pytest.raises(HW3Error, match="unknown quoted block 'nosuch'"):
        fill_quotes("<!-- quote: nosuch x -->\n<!-- /quote -->", doc, "page.md")


def test_no_machine_path_in_committed_results_and_documents():
    files = subprocess.run(["git", "ls-files", "figures", "docs", "README.md", "tests/data", "configs",
                            "notebooks"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert any(f.endswith("summary.json") for f in files)
    for name in files:
        path = ROOT / name
        if path.suffix in (".json", ".md", ".html", ".toml", ".ipynb", ".py", ".txt"):
            hits = MACHINE_PATH.findall(path.read_text(encoding="utf-8", errors="replace"))
            assert not hits, f"{name}: holds a machine path ({hits[0]}...)"


def test_the_machine_path_rule_finds_paths():
    assert MACHINE_PATH.search('"run": "/tmp/rep20c/build/runs/demo/lora16"')
    assert MACHINE_PATH.search("/home/ana/hw3/figures") and MACHINE_PATH.search("see /work/main/x")
    assert not MACHINE_PATH.search('"run": "../build/runs/demo/lora16"')
    assert not MACHINE_PATH.search("make report DATA=/path/to/hw3_data") and not MACHINE_PATH.search("/dev/zero")


def _run_all():
    return load_script("bench/run_all.py")


def test_benchmark_numbers_come_from_their_record():
    """docs/benchmarks.md's table is docs/benchmarks.json as `make bench` renders it, with the machine;
    outside the table the page states no measured number (targets are written in code spans)."""
    run_all = _run_all()
    record = json.loads((ROOT / "docs" / "benchmarks.json").read_text())
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert run_all.fill(text, record) == text, "docs/benchmarks.md differs from docs/benchmarks.json (run make bench)"
    assert record["machine"]["cpu"] and record["results"]
    prose = re.sub(r"`[^`]*`", "", run_all.BLOCK.sub("", text))
    assert not re.findall(r"\d+\.\d+|\d+x\b|\d+ ?(?:MB|GB|s)\b", prose), re.findall(r"\d+\.\d+|\d+x\b", prose)


def test_the_benchmark_block_is_rewritten(tmp_path):
    run_all = _run_all()
    record = {"date": "2026-01-01", "machine": {"cpu": "cpu X", "cpu_family_model": "6/1", "cpu_flags": ["avx2"],
                                                 "cores": 2, "torch_threads": 2, "python": "3.11", "torch": "2"},
              "results": [{"bench": "b.py", "name": "speed", "value": "1.5x"}]}
    page = "intro\n<!-- bench: results (generated) -->\nold\n<!-- /bench -->\noutro\n"
    out = run_all.fill(page, record)
    assert "| b.py | `speed` | 1.5x |" in out and "cpu X" in out and "old" not in out and out.endswith("outro\n")
    with pytest.raises(SystemExit, match="no '<!-- bench"):
        run_all.fill("no block", record)


def test_benchmark_lines_are_measurements_without_machine_paths():
    run_all = _run_all()
    out = f"speed_x: 1.5x\nwrote {ROOT}/build/x.json: greedy captions\ncode: {ROOT}\n[bench] note: skip\n"
    assert run_all.measured("b.py", out) == [{"bench": "b.py", "name": "speed_x", "value": "1.5x"},
                                             {"bench": "b.py", "name": "code", "value": "."}]
