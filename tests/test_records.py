"""Records that cross modules (run summaries, validations in log.jsonl): exact JSON round trips, and a
line that does not fit is refused with the file and the field named, never dropped in silence."""

import json

import pytest

from hw3lib.captioning.runs import validation_curve
from hw3lib.core.errors import HW3Error
from hw3lib.core.results import CurvePoint, RunSummary, Validation

ENTRY = {"step": 500, "epoch": 1, "val_loss": 0.83, "cider": 2.4, "example": "a red circle", "exact": 0.29,
         "recall": 0.64, "repeats": 0.61, "pointing_named": 0.75, "pointing_next": 0.65, "box_mass": 0.69}


def write_log(folder, *validations):
    lines = [json.dumps({"step": 1, "loss": 2.0, "lr": 1e-3})]
    lines += [json.dumps({"validation": v, "best": 1.0}) for v in validations]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")


def test_validation_round_trip_and_curve(tmp_path):
    assert Validation.from_json(ENTRY).to_json() == ENTRY
    write_log(tmp_path, ENTRY, ENTRY | {"step": 1000, "epoch": 2})
    assert validation_curve(tmp_path) == [CurvePoint(500, 2.4, 0.29, 0.64, 0.61, 0.75, 0.65),
                                          CurvePoint(1000, 2.4, 0.29, 0.64, 0.61, 0.75, 0.65)]
    write_log(tmp_path, {"step": 10, "epoch": 0, "val_loss": 1.5})  # real data: no object metrics
    assert validation_curve(tmp_path) == [CurvePoint(10)]


@pytest.mark.parametrize("entry,field", [({k: v for k, v in ENTRY.items() if k != "step"}, "step"),
                                          (ENTRY | {"cidr": 2.4}, "cidr"),
                                          (ENTRY | {"exact": "most"}, "exact")])
def test_a_validation_that_does_not_fit_is_named(tmp_path, entry, field):
    write_log(tmp_path, entry)
    with pytest.raises(HW3Error, match=rf"log\.jsonl: a validation: .*{field}"):
        validation_curve(tmp_path)


def test_run_summary_round_trip():
    doc = {"steps": 14, "best": 0.5, "best_step": 10, "parameters": {"trainable": 10, "frozen": 90, "lora": 10},
           "seconds": 1.5, "stopped": True}
    s = RunSummary.from_json(doc)
    assert s.to_json() == doc and s.trainable == 10 and s.stopped
    older = {k: v for k, v in doc.items() if k != "stopped"}  # a summary from before early stopping
    assert not RunSummary.from_json(older).stopped
    with pytest.raises(HW3Error, match="summary.json: .*parameters"):
        RunSummary.from_json(doc | {"parameters": None}, "summary.json")


def test_training_curves_read_losses_and_validations(tmp_path):
    from hw3lib.captioning.runs import training_curves

    write_log(tmp_path, ENTRY)
    c = training_curves(tmp_path)
    assert c.steps == [1] and c.loss == [2.0] and c.validations == [Validation.from_json(ENTRY)]
    write_log(tmp_path, ENTRY | {"cidr": 1.0})
    with pytest.raises(HW3Error, match=r"log\.jsonl: a validation: .*cidr"):
        training_curves(tmp_path)
