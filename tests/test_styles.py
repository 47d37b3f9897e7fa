"""Render styles, the style x framing record of the pretraining text, and P1's styled val set."""

import json

import numpy as np
import pytest
from PIL import Image

from hw3lib.core.errors import HW3Error
from hw3lib.demo.pretraining_text import FRAMINGS, PretrainingText, framings_for_styles
from hw3lib.demo.styles import LOWRES_SIDE, MATCHED_SHARE, STYLE_FRAMINGS, STYLES, draw_styles, render_style
from hw3lib.demo.world import DemoWorld, draw_scene, read_styles


def _scene(seed=0):
    img, objs = draw_scene(np.random.default_rng(seed), 96, 2)
    return img, objs


def _px(img):
    return np.asarray(img, dtype=np.float64)


@pytest.mark.parametrize("style", STYLES)
def test_each_style_is_reproducible_and_changes_the_image(style):
    img, _ = _scene()
    a = render_style(img, style, np.random.default_rng(3))
    b = render_style(img, style, np.random.default_rng(3))
    assert a.tobytes() == b.tobytes() and a.size == img.size and a.mode == "RGB"
    if style == "photo":  # the world's renders are its photos
        assert a.tobytes() == img.tobytes() and a is not img
    else:
        assert np.abs(_px(a) - _px(img)).mean() > 1.0


def test_styles_do_what_their_names_say():
    img, objs = _scene(1)
    x = _px(img)
    out = {s: _px(render_style(img, s, np.random.default_rng(0))) for s in STYLES}
    assert out["dark"].mean() < 0.6 * x.mean() and out["bright"].mean() > x.mean() + 30
    # blur removes high frequencies: neighbouring pixels differ less
    def roughness(a):
        return np.abs(np.diff(a, axis=1)).mean()
    assert roughness(out["blurry"]) < 0.6 * roughness(x)
    # low resolution: constant over blocks of 96 / LOWRES_SIDE pixels
    k = 96 // LOWRES_SIDE
    blocks = out["lowres"].reshape(LOWRES_SIDE, k, LOWRES_SIDE, k, 3)
    assert np.all(blocks == blocks[:, :1, :, :1])
    # a sketch is paper with ink along the objects' outlines, not inside them
    sk = out["sketch"].mean(-1)
    assert (sk > 200).mean() > 0.8
    ink = sk < 150
    for o in objs:
        x0, y0, x1, y1 = o.box
        ring = np.zeros_like(ink)
        ring[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
        ring[y0 + 4:y1 - 4, x0 + 4:x1 - 4] = False
        assert ink[ring].mean() > 0.05, o
    assert ink.sum() == ink[np.any([_near(o.box, ink.shape) for o in objs], axis=0)].sum()


def _near(box, shape, pad=3):
    m = np.zeros(shape, bool)
    x0, y0, x1, y1 = box
    m[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = True
    return m


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown style"):
        render_style(Image.new("RGB", (8, 8)), "watercolour", np.random.default_rng(0))


def test_style_draws_and_matched_framings_follow_their_shares():
    n = 60_000
    rng = np.random.default_rng(0)
    styles = draw_styles(rng, n)
    framings = framings_for_styles(rng, styles)
    own = np.array([[f for f, _ in FRAMINGS].index(STYLE_FRAMINGS[s]) for s in STYLES])[styles]
    # matched = drawn as the style's own (MATCHED_SHARE) or freely drawn onto it (its free probability)
    p_free_own = np.array([dict(FRAMINGS)[STYLE_FRAMINGS[s]] for s in STYLES])[styles]
    expect = MATCHED_SHARE + (1 - MATCHED_SHARE) * p_free_own.mean()
    assert abs((framings == own).mean() - expect) < 5 * np.sqrt(expect * (1 - expect) / n)


def test_style_framing_record():
    t = PretrainingText.start()
    photo, sketch = STYLES.index("photo"), STYLES.index("sketch")
    f_photo = [f for f, _ in FRAMINGS].index("a photo of {}")
    f_sketch = [f for f, _ in FRAMINGS].index("a sketch of {}")
    f_bare = [f for f, _ in FRAMINGS].index("{}")
    t.add("a photo of a red circle", f_photo, photo)
    t.add("a photo of a red circle", f_photo, sketch)
    t.add("a sketch of a ring", f_sketch, sketch)
    t.add("a ring", f_bare, sketch)
    assert t.style_framing[sketch][f_photo] == 1 and t.style_framing[photo][f_photo] == 1
    assert t.matched_share() == 0.5  # photo under photo, sketch under sketch: 2 of 4
    ws = t.word_styles("This is a photo of {object}")
    assert set(ws) == {"a", "photo", "of"}  # "this", "is" are in no framing that was drawn
    assert ws["photo"][photo] == 0.5 and ws["photo"][sketch] == 0.5
    assert ws["of"][sketch] == pytest.approx(2 / 3, abs=1e-4)  # shares are kept to 4 decimals
    again = PretrainingText.from_json(json.loads(json.dumps(t.to_json())), "x")
    assert again == t
    d = json.loads(json.dumps(t.to_json()))
    d["style_framing"][sketch][f_photo] += 1  # no longer sums to the framing counts
    with pytest.raises(HW3Error, match="x: style_framing"):
        PretrainingText.from_json(d, "x")
    d = json.loads(json.dumps(t.to_json()))
    d["style_framing"].pop()
    with pytest.raises(HW3Error, match="rows"):
        PretrainingText.from_json(d, "x")


def test_p1_val_is_styled_evenly_and_recorded(small_world):
    world = DemoWorld.load(small_world)
    images = sorted(p.name for p in (small_world / "p1_data" / "val").iterdir())
    assert sorted(world.p1_styles) == images
    by_class = {}
    for name, style in world.p1_styles.items():
        by_class.setdefault(name.split("_")[0], []).append(style)
    for styles in by_class.values():
        counts = [styles.count(s) for s in STYLES]
        assert max(counts) - min(counts) <= 1


def test_styles_file_is_checked(tmp_path):
    (tmp_path / "styles.json").write_text(json.dumps({"0_1.png": "watercolour"}))
    with pytest.raises(HW3Error, match="watercolour"):
        read_styles(tmp_path / "styles.json")
