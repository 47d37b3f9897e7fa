"""The demo CLIP's pretraining text: the framing table, the draws, and the record of what was read."""

import json

import numpy as np
import pytest

from hw3lib.core.errors import HW3Error
from hw3lib.demo.models_record import DemoModels
from hw3lib.demo.pretraining_text import (
    FRAMINGS,
    UNSEEN_FRAMINGS,
    PretrainingText,
    draw_framings,
    frame,
    words,
)
from hw3lib.zeroshot.negation import NEGATIONS


def test_framing_table():
    assert sum(p for _, p in FRAMINGS) == pytest.approx(1.0, abs=1e-12)
    names = [f for f, _ in FRAMINGS]
    assert len(set(names)) == len(names) and all(f.count("{}") == 1 for f in names)
    assert not set(names) & set(UNSEEN_FRAMINGS)
    # no framing negates (the base CLIP never reads a negation word); the negation captions do
    negation_words = {"no", "not", "without"}
    assert not negation_words & {w for f in names for w in words(f)}
    assert negation_words <= {w for n in NEGATIONS for w in words(n)}
    # the unseen framings' words really are unseen by every framing and every demo description word
    seen = {w for f in names for w in words(f)}
    assert all(set(words(f)) - seen for f in UNSEEN_FRAMINGS)


def test_draws_follow_the_probabilities():
    n = 200_000
    counts = np.bincount(draw_framings(np.random.default_rng(0), n), minlength=len(FRAMINGS))
    for (f, p), c in zip(FRAMINGS, counts, strict=True):
        sd = np.sqrt(n * p * (1 - p))
        assert abs(c - n * p) < 5 * sd, (f, c, n * p)


def test_record_counts_and_frequencies():
    t = PretrainingText.start()
    t.add(frame("a red circle", "a photo of {}"), 1, 0)
    t.add(frame("a red circle", "a photo of {}"), 1, 0)
    t.add("a blue star", 0, 0)
    t.add(frame("two shapes: a star and a ring", "itap of {}"), 14, 0)
    assert FRAMINGS[1][0] == "a photo of {}" and FRAMINGS[14][0] == "itap of {}"
    assert t.captions == 4 and t.counts[1] == 2 and t.counts[0] == 1 and sum(t.counts) == 4
    assert t.frequency("a photo of {}") == 0.5 and t.frequency("a tattoo of {}") == 0.0
    assert t.word_counts["a"] == 2 * 2 + 1 + 2 and t.word_counts["photo"] == 2 and t.word_counts["itap"] == 1
    total = sum(t.word_counts.values())
    # mean of log10(1 + count per million): "photo" twice, "of" three times
    expect = np.mean([np.log10(1 + 1e6 * 2 / total), np.log10(1 + 1e6 * 3 / total)])
    assert t.word_frequency("photo of {object}") == pytest.approx(expect)
    assert t.word_frequency("{object}") == 0.0 and t.word_frequency("origami {object}") == 0.0
    assert t.unseen_words("No {object}, no score.") == ["no", "no", "score"]
    again = PretrainingText.from_json(json.loads(json.dumps(t.to_json())), "x")
    assert again == t


@pytest.mark.parametrize("edit", [
    lambda d: d.update(captions=d["captions"] + 1),  # framing counts no longer sum to it
    lambda d: d["framings"][0].update(count=-1),
    lambda d: d["framings"][0].update(count=True),
    lambda d: d["word_counts"].update(photo=1.5),
    lambda d: d.pop("word_counts"),
    lambda d: d["framings"][0].pop("probability"),
])
def test_record_is_checked(edit):
    t = PretrainingText.start()
    t.add("a photo of a red circle", 1, 0)
    d = json.loads(json.dumps(t.to_json()))
    edit(d)
    with pytest.raises(HW3Error, match="x"):
        PretrainingText.from_json(d, "x")


def test_trained_record_matches_the_text(small_models):
    """The record written by demo-models is what was read: counts sum to the captions, the framings'
    own words are counted exactly as often as the framings holding them were drawn (descriptions never
    hold "photo", "image", "itap", ...), and no negation word was read."""
    text = DemoModels.load(small_models).pretraining_text()
    assert text is not None and text.captions == sum(text.counts) > 0
    for f in text.framings:
        for w in set(words(f)) - {"a", "of", "an", "this", "is"}:
            expect = sum(cc for ff, cc in zip(text.framings, text.counts, strict=True) if w in words(ff))
            assert text.word_counts.get(w, 0) == expect, (w, f)
    assert not {"no", "not", "without"} & set(text.word_counts)
    assert DemoModels.load("real") is None


def test_no_record_for_a_manifest_without_demo_metrics(tmp_path):
    (tmp_path / "assets.json").write_text("{}")
    assert DemoModels.load(tmp_path / "assets.json") is None
    (tmp_path / "metrics.json").write_text(json.dumps({"clip_text": {"framings": "x"}}))
    with pytest.raises(HW3Error, match=r"metrics.json: .*size"):  # the record's first missing field, named
        DemoModels.load(tmp_path / "assets.json")


def test_words():
    assert words("A close-up photo of 'the' {object}.") == ["a", "close", "up", "photo", "of", "the", "object"]
