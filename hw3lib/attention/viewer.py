"""P3's viewers: the attention explorer (ipywidgets, for JupyterLab) and a standalone HTML page.

Both only render what `attention.py` computes. The explorer steps through a captioned image's per-token
maps with a choice of image, method (raw, rollout, relevance), layer and head (or their mean), a token
slider with play, and the caption with the current token highlighted. Maps are computed on first view
and kept. The HTML page needs no kernel and no network: per image a slider and play button, and a
method choice when several methods are given (layers and heads are fixed when the page is written,
since every combination would have to be embedded).
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
import torch
from PIL import Image

from ..core.images import open_image
from .maps import METHODS, CaptionAttention, display_maps, method_maps, overlay


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def frames(ca: CaptionAttention, maps: torch.Tensor, size: int = 224) -> list[bytes]:
    """One JPEG per token: the image with that token's map overlaid."""
    im = open_image(ca.path).resize((size, size), Image.BILINEAR)
    return [_jpeg(overlay(im, h)) for h in display_maps(ca, maps, (size, size))]


def caption_html(ca: CaptionAttention, current: int) -> str:
    """The generated tokens with token `current` highlighted (the end token shown as ⏎)."""
    words = []
    for i, t in enumerate(ca.token_texts):
        text = html.escape("⏎" if t == "<|endoftext|>" else t).replace(" ", "&nbsp;")
        words.append(f"<b style='background:#ffd54f;color:#b00'>{text}</b>" if i == current else text)
    return f"<div class='hw3-caption' style='font-family:monospace;font-size:1.1em'>{''.join(words)}</div>"


class AttentionExplorer:
    """Step through the attention maps of captioned images (`attention.capture`) in a notebook.

    `explorer.widget` is the ipywidgets box; displaying the explorer displays it."""

    def __init__(self, model, captures: list[CaptionAttention], methods=METHODS, size: int = 256,
                 interval_ms: int = 700):
        import ipywidgets as W

        if not captures:
            raise ValueError("no captured captions to explore")
        self.model, self.captures, self.size = model, captures, size
        self._frames: dict[tuple, list[bytes]] = {}  # (image, method, layers, heads) -> one JPEG per token
        n_layer, n_head = captures[0].attention.shape[1:3]  # (T, L, H, S)
        self.image = W.Dropdown(options=[(ca.path.name, i) for i, ca in enumerate(captures)], description="image")
        self.method = W.ToggleButtons(options=list(methods), description="method")
        self.layer = W.Dropdown(options=[("last", "last"), ("mean of all", "all")] + [(str(i), i) for i in range(n_layer)],
                                description="layer")
        self.head = W.Dropdown(options=[("mean", "mean"), ("max", "max")] + [(str(h), h) for h in range(n_head)],
                               description="head")
        self.token = W.IntSlider(value=0, min=0, max=0, description="token", continuous_update=True)
        self.play = W.Play(value=0, min=0, max=0, interval=interval_ms, description="play")
        W.jslink((self.play, "value"), (self.token, "value"))
        self.caption = W.HTML()
        self.view = W.Image(format="jpeg", width=size, height=size)
        for w, name in ((self.view, "hw3-frame"), (self.token, "hw3-token"), (self.method, "hw3-method"),
                        (self.image, "hw3-image"), (self.layer, "hw3-layer"), (self.head, "hw3-head")):
            w.add_class(name)
        self.widget = W.VBox([W.HBox([self.image, self.layer, self.head]), self.method,
                              W.HBox([self.play, self.token]), self.view, self.caption])
        for w in (self.image, self.method, self.layer, self.head):
            w.observe(self._select, names="value")
        self.token.observe(self._show, names="value")
        self._select()

    def frames_for(self, index: int, method: str, layers, heads) -> list[bytes]:
        if method == "relevance":  # summed over layers, heads averaged: the choice does not apply
            layers, heads = "all", "mean"
        key = (index, method, layers, heads)
        if key not in self._frames:
            ca = self.captures[index]
            self._frames[key] = frames(ca, method_maps(self.model, ca, method, layers, heads), self.size)
        return self._frames[key]

    def _select(self, change=None) -> None:
        self.layer.disabled = self.head.disabled = self.method.value == "relevance"
        n = len(self.captures[self.image.value].token_ids)
        self.play.max = self.token.max = n - 1
        self.token.value = min(self.token.value, n - 1)
        self._show()

    def _show(self, change=None) -> None:
        ca = self.captures[self.image.value]
        t = self.token.value
        self.view.value = self.frames_for(self.image.value, self.method.value, self.layer.value, self.head.value)[t]
        self.caption.value = caption_html(ca, t) + f"<div>token {t + 1}/{len(ca.token_ids)}</div>"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def show_attention(ca: CaptionAttention, maps: torch.Tensor | None = None, model=None, size: int = 256):
    """One image: the explorer when the model is given (every method, layer and head), else a slider
    over the given maps."""
    if model is not None:
        return AttentionExplorer(model, [ca], size=size).widget
    import ipywidgets as W

    pngs = frames(ca, maps, size)
    img = W.Image(value=pngs[0], format="jpeg", width=size, height=size)
    label = W.HTML()
    slider = W.IntSlider(value=0, min=0, max=len(pngs) - 1, description="token", continuous_update=True)
    play = W.Play(value=0, min=0, max=len(pngs) - 1, interval=700)
    W.jslink((play, "value"), (slider, "value"))

    def update(change=None):
        img.value = pngs[slider.value]
        label.value = caption_html(ca, slider.value)

    slider.observe(update, names="value")
    update()
    return W.VBox([W.HBox([play, slider]), img, label])


def script_json(obj) -> str:
    """JSON that is safe inside a <script> element: `<`, `>` and `&` as \\u escapes, so no text
    (a token reading `</script><script>...`, an `<!--`) can end the element or start markup. JSON.parse
    reads the escapes back to the same characters."""
    return (json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def save_viewer(path, items: list[tuple[CaptionAttention, torch.Tensor | dict[str, torch.Tensor]]], **kwargs) -> None:
    """`html_viewer`'s page written to `path` atomically."""
    from ..core.files import atomic_write_text

    atomic_write_text(path, html_viewer(items, **kwargs))


def html_viewer(items: list[tuple[CaptionAttention, torch.Tensor | dict[str, torch.Tensor]]],
                title: str = "hw3lib attention viewer", size: int = 256) -> str:
    """A standalone HTML page (no kernel, no network): per image a slider and play button stepping
    through the tokens, and a method choice when `maps` is {method: maps}; frames embedded as JPEGs."""
    blocks = []
    for n, (ca, maps) in enumerate(items):
        by_method = maps if isinstance(maps, dict) else {"": maps}
        srcs = {m: ["data:image/jpeg;base64," + base64.b64encode(p).decode() for p in frames(ca, mm, size)]
                for m, mm in by_method.items()}
        tokens = [t if t.strip() else repr(t) for t in ca.token_texts]
        choice = "" if len(srcs) == 1 else '<select class="method" aria-label="method">' + "".join(
            f'<option value="{html.escape(m)}">{html.escape(m)}</option>' for m in srcs) + "</select>"
        blocks.append(f"""
<section class="viewer" id="v{n}">
  <h2>{html.escape(ca.path.name)}: <span class="caption">{html.escape(ca.caption)}</span></h2>
  <div class="controls"><button class="play" type="button">play</button> {choice}
  <input class="slider" type="range" min="0" max="{len(tokens) - 1}" value="0" step="1" aria-label="token">
  <span class="token"></span></div>
  <img class="frame" width="{size}" height="{size}" alt="attention map">
  <script type="application/json" class="data">{script_json({"frames": srcs, "tokens": tokens})}</script>
</section>""")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} .viewer{{margin-bottom:2em}} .token{{font-family:monospace;
font-size:1.2em;margin-left:1em}} .caption{{font-weight:normal}} .controls{{margin:.5em 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
{''.join(blocks)}
<script>
for (const v of document.querySelectorAll('.viewer')) {{
  const d = JSON.parse(v.querySelector('.data').textContent);
  const s = v.querySelector('.slider'), img = v.querySelector('.frame'), tok = v.querySelector('.token');
  const sel = v.querySelector('.method');
  const method = () => sel ? sel.value : Object.keys(d.frames)[0];
  const show = () => {{ const t = +s.value; img.src = d.frames[method()][t];
    tok.textContent = (t + 1) + '/' + d.tokens.length + '  ' + d.tokens[t]; }};
  s.addEventListener('input', show); if (sel) sel.addEventListener('change', show); show();
  let timer = null;
  v.querySelector('.play').addEventListener('click', () => {{
    if (timer) {{ clearInterval(timer); timer = null; return; }}
    timer = setInterval(() => {{ s.value = (+s.value + 1) % d.tokens.length; show(); }}, 700);
  }});
}}
</script></body></html>
"""
