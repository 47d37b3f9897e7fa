"""The viewers on the real-size grid (ViT-g/14: 16x16 patches + CLS), from a synthetic capture: the
explorer's controls select the maps they say, and the HTML page embeds a frame per token and method."""

import numpy as np
import pytest
import torch
from PIL import Image

from hw3lib.attention.maps import CaptionAttention, display_maps, method_maps, select
from hw3lib.attention.viewer import AttentionExplorer, caption_html, frames, html_viewer

pytest.importorskip("ipywidgets")


@pytest.fixture
def real_size_capture(tmp_path):
    """Five tokens whose raw cross-attention (4 layers, 3 heads) peaks on a different patch of a
    16x16 grid per token, layer and head."""
    T, L, H, S = 5, 4, 3, 1 + 16 * 16
    att = torch.full((T, L, H, S), 1e-4)
    for t in range(T):
        for layer in range(L):
            for h in range(H):
                att[t, layer, h, 1 + (t * 37 + layer * 11 + h * 5) % 256] = 1.0
    att = att / att.sum(-1, keepdim=True)
    path = tmp_path / "img.png"
    Image.fromarray(np.full((224, 224, 3), 128, np.uint8)).save(path)
    return CaptionAttention(path, "a red circle", [1, 2, 3, 4, 9], ["a", " red", " circle", ".", "<|endoftext|>"],
                            att, torch.zeros(S, 8), torch.zeros(3, 224, 224), (16, 16), 1, 9)


def test_explorer_controls_select_the_maps_they_name(real_size_capture):
    ca = real_size_capture
    ex = AttentionExplorer(None, [ca], methods=("raw",), size=64)
    assert ex.token.max == 4 and ex.layer.options[-1] == ("3", 3) and ex.head.options[-1] == ("2", 2)
    shown = set()
    for layer, head in (("last", "mean"), (0, 0), (2, 1), ("all", "max")):
        ex.layer.value, ex.head.value = layer, head
        for t in (0, 3):
            ex.token.value = t
            assert ex.view.value == frames(ca, method_maps(None, ca, "raw", layer, head), 64)[t]
            shown.add(ex.view.value)
            assert "<b" in ex.caption.value and f"token {t + 1}/5" in ex.caption.value
    assert len(shown) == 8  # every control changed the picture
    peak = display_maps(ca, select(ca.attention, [2], [1])[:, 1:], (224, 224))[0]
    r, c = np.unravel_index(peak.argmax(), peak.shape)
    assert (r // 14, c // 14) == divmod((0 * 37 + 2 * 11 + 1 * 5) % 256, 16)  # the right patch of 16x16


def test_html_viewer_embeds_every_method(real_size_capture):
    ca = real_size_capture
    maps = {m: method_maps(None, ca, "raw", layer) for m, layer in (("last", "last"), ("first", [0]))}
    page = html_viewer([(ca, maps)], size=64)
    assert page.count("data:image/jpeg;base64,") == 2 * 5 and '<select class="method"' in page
    assert caption_html(ca, 4).endswith("</div>") and "⏎" in caption_html(ca, 4)
