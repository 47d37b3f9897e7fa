"""The typed results (hw3lib/core/results.py): one JSON form each, read back exactly; the report's
summary.md is what its builders make of summary.json."""

import json

import pytest

from hw3lib.core import results as res
from hw3lib.core.errors import HW3Error

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
    assert i.to_json() == [0.25, 0.75] and res.Interval.from_json([0.25, 0.75]) == i
    assert tuple(i) == (0.25, 0.75) and i.level == 0.95 and i.excludes(0.0) and not i.excludes(0.5)
    d = res.Difference(-0.1, res.Interval(-0.2, 0.05), 0.3)
    assert res.Difference.from_json(d.to_json()) == d and not d.ci.excludes(0.0)
    t = res.PairedTest(0.6, 0.7, 0.1, res.Interval(0.02, 0.18), 3, 13, 0.02)
    assert res.PairedTest.from_json(json.loads(json.dumps(t.to_json()))) == t
    assert res.Accuracy.from_json(res.Accuracy(0.5, i).to_json()) == res.Accuracy(0.5, i)
    assert res.Share.from_json(res.Share(None, None, 0, 0).to_json()) == res.Share(None, None, 0, 0)


def test_variant_row_round_trip_and_scores():
    row = res.VariantRow("lora16", 3.5, 2.1, "lora", 412800, "runs/lora16", ci={"CIDEr": res.Interval(3.4, 3.6)},
                         grounding={"mentions": res.Share(0.9, res.Interval(0.8, 0.95), 9, 10)},
                         vs_reference={"CIDEr": res.Difference(0.0, res.Interval(0.0, 0.0), 1.0)})
    j = json.loads(json.dumps(row.to_json()))
    assert j["ci"] == {"CIDEr": [3.4, 3.6]} and j["grounding"]["mentions"]["ci"] == [0.8, 0.95]
    assert res.VariantRow.from_json(j) == row and row.score("CIDEr") == (3.5, res.Interval(3.4, 3.6))
    assert row.score("mentions") == (0.9, res.Interval(0.8, 0.95)) and row.score("colors") == (None, None)
    beam = res.VariantRow("lora16", 3.6, 2.0, beams=3)
    assert res.VariantRow.from_json(beam.to_json()) == beam


@pytest.mark.parametrize(("data", "field"), [
    ([0.1], "an interval is [low, high]"),
    ({"difference": "big", "ci": [0, 1], "p_value": 0.5}, "field difference"),
    ({"difference": 0.1, "ci": [0, 1]}, "field p_value: Field required"),
    ({"difference": 0.1, "ci": [0, "x"], "p_value": 0.5}, "field ci.high"),
])
def test_a_bad_field_is_one_line_naming_the_file_and_field(data, field):
    cls = res.Interval if isinstance(data, list) else res.Difference
    with pytest.raises(HW3Error) as e:
        cls.from_json(data, "figures/p2_summary.json")
    msg = str(e.value)
    assert msg.startswith("figures/p2_summary.json: ") and field in msg and "\n" not in msg


def test_summary_sections_are_read_and_written_back_exactly():
    doc = json.loads(SUMMARY.read_text())
    assert res.P1Summary.from_json(doc["p1"]).to_json() == doc["p1"]
    assert res.VariantTable.from_json(doc["p2"]).to_json() == doc["p2"]
    assert res.P3Summary.from_json(doc["p3"]).to_json() == doc["p3"]


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
