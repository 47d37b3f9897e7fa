"""P3: maps are distributions over the patch grid, aggregation choices, localisation scoring, the
HTML viewer in headless Chromium, and the attention CLI."""


import pytest
import torch

from hw3lib.attention.maps import (
    METHODS,
    CaptionAttention,
    capture,
    method_maps,
    patch_distribution,
    select,
    to_grid,
    upsample,
)
from hw3lib.attention.viewer import html_viewer
from hw3lib.demo.world import Obj
from hw3lib.models.loading import encoder_transform

from . import tiny
from .conftest import headless_chrome, run_cli


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """Attention of a tiny random captioner (timm ViT on 32x32 images: a 4x4 grid) on two random images."""
    model = tiny.perturbed(tiny.tiny_captioner("lora", encoder=tiny.tiny_encoder()))
    paths = tiny.random_images(tmp_path_factory.mktemp("images"))
    return model, capture(model, tiny.TinyTokenizer(), encoder_transform(model.encoder), paths, max_len=10)


def test_select_aggregations_by_hand():
    att = torch.rand(3, 4, 2, 5)  # (T, L, H, S)
    torch.testing.assert_close(select(att, "last", "mean"), att[:, 3].mean(1))
    torch.testing.assert_close(select(att, "all", "max"), att.max(2).values.mean(1))
    torch.testing.assert_close(select(att, slice(1, 3), [1]), att[:, 1:3, 1].mean(1))
    torch.testing.assert_close(select(att, [0, -1], 0), att[:, [0, 3], 0].mean(1))


def test_patch_distribution_drops_prefix_and_renormalises():
    maps = torch.tensor([[0.5, 0.25, 0.25], [0.9, 0.0, 0.1]])
    d = patch_distribution(maps, 1)
    torch.testing.assert_close(d, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))


@pytest.mark.parametrize("method", METHODS)
def test_maps_are_distributions_over_the_grid(captured, method):
    model, cas = captured
    for ca in cas:
        assert ca.grid == (4, 4) and ca.n_prefix == 1
        assert ca.attention.shape[0] == len(ca.token_ids) == len(ca.token_texts) > 1
        maps = method_maps(model, ca, method)
        assert maps.shape == (len(ca.token_ids), 16) and (maps >= 0).all()
        torch.testing.assert_close(maps.sum(-1), torch.ones(len(ca.token_ids)), atol=1e-5, rtol=0)
        assert to_grid(maps, ca.grid).shape == (len(ca.token_ids), 4, 4)
        assert upsample(to_grid(maps, ca.grid), (96, 96)).shape == (len(ca.token_ids), 96, 96)


def test_raw_attention_sums_to_one_before_dropping_cls(captured):
    _, cas = captured
    for ca in cas:
        torch.testing.assert_close(ca.attention.sum(-1), torch.ones(ca.attention.shape[:-1]), atol=1e-5, rtol=0)


def test_html_viewer_in_headless_chromium(captured, tmp_path):
    model, cas = captured
    page = tmp_path / "viewer.html"
    page.write_text(html_viewer([(ca, {m: method_maps(model, ca, m) for m in ("raw", "rollout")}) for ca in cas]))
    drv = headless_chrome(tmp_path / "profile")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    try:
        drv.get(page.as_uri())
        viewer = drv.find_elements(By.CSS_SELECTOR, ".viewer")[0]
        img, slider, token = (viewer.find_element(By.CSS_SELECTOR, s) for s in (".frame", ".slider", ".token"))
        first_src, first_token = img.get_attribute("src"), token.text
        assert first_src.startswith("data:image/jpeg;base64,") and first_token.startswith("1/")
        slider.send_keys(Keys.ARROW_RIGHT)  # a user moving the slider one step
        assert slider.get_attribute("value") == "1"
        assert img.get_attribute("src") != first_src and token.text.startswith("2/")
        assert drv.execute_script("return arguments[0].naturalWidth", img) > 0  # the frame decodes
        viewer.find_element(By.CSS_SELECTOR, ".play").click()
        import time

        time.sleep(1.6)
        assert slider.get_attribute("value") not in ("1",)  # play advanced it
        viewer.find_element(By.CSS_SELECTOR, ".play").click()  # pause
        before = img.get_attribute("src")
        Select(viewer.find_element(By.CSS_SELECTOR, ".method")).select_by_value("rollout")
        assert img.get_attribute("src") != before  # the method choice changes the frame
    finally:
        drv.quit()


def test_attention_cli(small_models, small_run, small_world, tmp_path):
    images = small_world / "p3_data" / "images"
    r = run_cli("attention", images, "--checkpoint", small_run, "--assets", small_models, "--out", tmp_path / "fig",
                "--html", tmp_path / "v.html", "--method", "rollout", "--layers", "all", "--max-len", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "fig").glob("*_attention.png"))) == 5
    html = (tmp_path / "v.html").read_text()
    assert html.count('class="viewer"') == 5 and "http" not in html.split("<body>")[1]  # nothing fetched


def test_capture_record_fields(captured):
    _, cas = captured
    ca = cas[0]
    assert isinstance(ca, CaptionAttention) and ca.caption == "".join(
        t for t in ca.token_texts if t != "<|endoftext|>").strip()


def test_wrong_nouns_are_repeats_and_absent_types():
    """The report's P3 case: "a green ring, a blue heart and a blue heart" over a green ring, a purple ring
    and a blue heart - the second heart is a repeat; "a red star" names a type the image lacks."""
    from types import SimpleNamespace

    from hw3lib.attention.maps import _wrong_nouns
    from hw3lib.demo.world import COLORS, SHAPES

    objs = [Obj("ring", "green", "small", (0, 0, 8, 8)), Obj("ring", "purple", "small", (10, 0, 18, 8)),
            Obj("heart", "blue", "small", (20, 0, 28, 8))]
    ca = SimpleNamespace(token_texts=[" a", " green", " ring", ",", " a", " blue", " heart", " and", " a", " blue",
                                      " heart", " and", " a", " red", " star", "<|endoftext|>"])
    got = _wrong_nouns(ca, objs, list(COLORS), SHAPES)
    assert [t for t, _, _ in got] == [10, 14]
    assert got[0][1] == [(20, 0, 28, 8)] and got[0][2] == [(0, 0, 8, 8), (10, 0, 18, 8)]  # named type / others
    assert got[1][1] == [] and len(got[1][2]) == 3


def test_noun_boxes_read_every_phrasing_of_a_colour():
    """P3's localisation reads mentions as the object metrics do: "a circle coloured red" narrows to the red
    circle, as "a red circle" does; a colour the image lacks for that shape leaves every circle."""
    from pathlib import Path

    from hw3lib.attention.maps import CaptionAttention, _noun_boxes
    from hw3lib.demo.world import COLORS, SHAPES

    objects = [Obj("circle", "red", "small", (0, 0, 10, 10)), Obj("circle", "blue", "small", (20, 0, 30, 10))]

    def boxes(caption):
        texts = [f" {w}" for w in caption.split()]
        ca = CaptionAttention(Path("x.png"), caption, list(range(len(texts))), texts, torch.zeros(0), torch.zeros(0),
                              torch.zeros(0), (1, 1), 1, 0)
        return _noun_boxes(ca, objects, list(SHAPES), list(COLORS))

    assert boxes("a red circle") == [(2, "circle", [(0, 0, 10, 10)])]
    assert boxes("a small circle coloured red") == [(2, "circle", [(0, 0, 10, 10)])]
    assert boxes("a green circle") == [(2, "circle", [(0, 0, 10, 10), (20, 0, 30, 10)])]


def test_deletion_score_equals_blanking_by_hand(captured):
    """The deletion score: token t's probability, averaged over the image with its most attended patches
    (a fraction at a time) filled with the image mean - against a one-image-at-a-time reference."""
    import numpy as np

    from hw3lib.attention.maps import deletion_auc

    model, cas = captured
    ca, t = cas[0], 1
    patch_map = np.arange(16, dtype=float)  # patch 15 is the most attended, then 14, ...
    rows, cols = ca.grid
    ph, pw = ca.pixels.shape[1] // rows, ca.pixels.shape[2] // cols
    want = []
    with torch.no_grad():
        for k in (0, 4, 8):  # fractions 0, 1/4, 1/2 of the 16 patches
            x = ca.pixels.clone()
            fill = x.mean(dim=(1, 2), keepdim=True)
            for p in range(15, 15 - k, -1):
                r, c = divmod(p, cols)
                x[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = fill
            logits = model(model.encode(x[None]), torch.tensor([[ca.eot_id] + ca.token_ids[:t]]))
            want.append(float(logits[0, -1].softmax(-1)[ca.token_ids[t]]))
    assert len(set(want)) == 3  # blanking changes the prediction: the score can tell maps apart
    assert deletion_auc(model, ca, t, patch_map, fractions=(0, 0.25, 0.5)) == pytest.approx(np.mean(want), rel=1e-5)
