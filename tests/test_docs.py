"""Numbers quoted in README.md and docs/ are generated blocks of figures/summary.json, and no committed
result or document carries a machine's path."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from hw3lib.app.summary import QUOTES, fill_quotes, refresh_quotes
from hw3lib.core.errors import HW3Error

ROOT = Path(__file__).resolve().parents[1]
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
