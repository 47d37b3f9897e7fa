"""The typed results (hw3lib/core/results.py): one JSON form each, read back exactly; the report's
summary.md is what its builders make of summary.json."""

import json

import pytest

from hw3lib.core import results as res

from .conftest import ROOT

SUMMARY = ROOT / "figures" / "summary.json"


def test_summary_md_is_built_from_summary_json():
    """Each part of figures/summary.md is its section builder's output on figures/summary.json (both are
    rewritten together by make report, so this holds in either order of make report and make test)."""
    from hw3lib.app.summary import p1_section, p2_section, p3_section

    doc, md = json.loads(SUMMARY.read_text()), (ROOT / "figures" / "summary.md").read_text()
    for part, build in (("p1", p1_section), ("p2", p2_section), ("p3", p3_section)):
        lines = build(doc[part])
        assert len(lines) > 5 and "\n".join(lines).strip() in md, f"summary.md's {part} differs from summary.json"


def test_interval_and_difference_round_trip():
    i = res.Interval(0.25, 0.75)
    assert res.Interval.from_json(i.to_json()) == i and tuple(i) == (0.25, 0.75) and i.level == 0.95
    assert i.excludes(0.0) and not i.excludes(0.5) and res.Interval.from_json(None) is None
    d = res.Difference(-0.1, res.Interval(-0.2, 0.05), 0.3)
    assert res.Difference.from_json(d.to_json()) == d and not d.ci.excludes(0.0)
    t = res.PairedTest(0.6, 0.7, 0.1, res.Interval(0.02, 0.18), 3, 13, 0.02)
    assert res.PairedTest.from_json(t.to_json()) == t
    assert res.Accuracy.from_json(res.Accuracy(0.5, i).to_json()) == res.Accuracy(0.5, i)
    assert res.Share.from_json(res.Share(None, None, 0, 0).to_json()) == res.Share(None, None, 0, 0)


def test_variant_row_json_form():
    row = res.VariantRow("lora16", 3.5, 2.1, "lora", 412800, "runs/lora16", ci={"CIDEr": res.Interval(3.4, 3.6)},
                     grounding={"mentions": res.Share(0.9, res.Interval(0.8, 0.95), 9, 10)},
                     vs_reference={"CIDEr": res.Difference(0.0, res.Interval(0.0, 0.0), 1.0)})
    j = row.to_json()
    assert list(j) == ["variant", "peft", "trainable", "CIDEr", "CLIPScore", "run", "CIDEr_ci", "grounding",
                       "vs_reference"]
    assert res.VariantRow.from_json(j) == row and row.score("CIDEr") == (3.5, res.Interval(3.4, 3.6))
    assert row.score("mentions") == (0.9, res.Interval(0.8, 0.95)) and row.score("colors") == (None, None)
    beam = res.VariantRow("lora16", 3.6, 2.0, beams=3)
    assert "beams" in beam.to_json() and "run" not in beam.to_json()
    assert res.VariantRow.from_json(beam.to_json()) == res.VariantRow("lora16", 3.6, 2.0, beams=3)


@pytest.mark.skipif(not SUMMARY.is_file(), reason="no figures/summary.json (run make report)")
def test_summary_sections_are_read_and_written_back_exactly():
    doc = json.loads(SUMMARY.read_text())
    p1 = {k: v for k, v in doc["p1"].items() if k not in ("negation", "frequency", "negation_experiment")}
    assert res.PromptStudy.from_json(p1).to_json() == p1
    assert res.NegationStudy.from_json(doc["p1"]["negation"]).to_json() == doc["p1"]["negation"]
    assert res.FrequencyStudy.from_json(doc["p1"]["frequency"]).to_json() == doc["p1"]["frequency"]
    assert [res.NegationScores.from_json(d).to_json() for d in doc["p1"]["negation_experiment"]] == \
        doc["p1"]["negation_experiment"]
    assert res.VariantTable.from_json(doc["p2"]).to_json() == doc["p2"]
    assert res.Localisation.from_json(doc["p3"]["localisation"]).to_json() == doc["p3"]["localisation"]


def test_index_page_is_the_report(tmp_path):
    """index.html shows summary.md's tables and the key figures inline, and links only this run's files."""
    from hw3lib.app.report import export_html

    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "summary.md").write_text("# hw3lib report summary\n\n## P2\n\n| variant | exact scene |\n|---|---:|\n"
                                        "| lora16 | 55.0% |\n")
    for name in ("p2_grounding.png", "p1_prompt_table.png", "p2_stale_from_an_older_world.png"):
        (figures / name).write_bytes(b"\x89PNG")
    index = export_html([], figures, tmp_path / "html", ["summary.md", "p2_grounding.png", "p1_prompt_table.png"])
    page = index.read_text()
    assert "<table>" in page and "<td>lora16</td>" in page and "<h2>P2</h2>" in page
    assert page.index('src="../figures/p1_prompt_table.png"') < page.index('src="../figures/p2_grounding.png"')
    assert "stale" not in page and "p2_decoding.png" not in page
