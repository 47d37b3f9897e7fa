"""P1 by render style (demo world): prompt effects measured where the wording carries information.

The demo CLIP read "a sketch of ..." under sketches and "a blurry photo of ..." under blurred images
(`demo.styles`, `demo.pretraining_text`). On P1 images in a recorded mix of styles this scores every
style's framing as a prompt on every style's images, and asks:
  - per style, does its own framing beat "a photo of a {object}" (paired interval and McNemar)?
  - per image, does its style's framing beat the mean of the other framings?
  - do the report's three prompts differ (McNemar on every pair), and which of their words came with
    which style in the pretraining text?
  - CLIP's own two findings: "a photo of a {object}." vs the bare class name, and the 80-template
    ensemble vs that single prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..core.results import PromptTest, StyleRow, StyleStudy
from ..demo.pretraining_text import PretrainingText
from ..demo.styles import STYLE_FRAMINGS, STYLES
from ..metrics.stats import paired_bootstrap, paired_test
from .classify import ZeroShotStudy, ensemble

BARE = "{object}"


def style_prompt(style: str) -> str:
    """A style's framing as a prompt: "a sketch of {}" -> "a sketch of a {object}"."""
    return STYLE_FRAMINGS[style].replace("{}", "a {object}")


@dataclass(frozen=True)
class StylePrompts:
    """The prompts `style_study` compares beside each style's own framing."""
    report: list[str]  # the report's prompts, compared with each other
    photo: str  # CLIP's default prompt
    templates: list[str]  # the ensemble compared with `photo`


def style_study(study: ZeroShotStudy, image_styles: list[str], compared: StylePrompts,
                text: PretrainingText | None = None, n_boot: int = 2000, seed: int = 0, name: str = "base") -> StyleStudy:
    """`image_styles[i]` is the style of `study.paths[i]`; `text` (the demo CLIP's record) explains the
    report's prompts; `name` names the CLIP."""
    report_prompts, photo, templates = compared.report, compared.photo, compared.templates
    labels = study.require_labels()
    image_styles = np.asarray(image_styles)
    if len(image_styles) != len(labels):
        raise ValueError(f"{len(image_styles)} styles for {len(labels)} images")
    styles = [s for s in STYLES if (image_styles == s).any()]
    prompts = [style_prompt(s) for s in STYLES]
    singles = list(dict.fromkeys([*prompts, *report_prompts, photo, BARE]))
    ok = dict(zip(singles, study.predict_each(study.text_features(singles)) == labels[None], strict=True))  # (N,) each
    ok["ensemble"] = study.predict(ensemble(study.text_features(templates))) == labels

    rows = []
    for s in styles:
        m = image_styles == s
        vs_photo = None if s == "photo" else paired_test(ok[style_prompt("photo")][m], ok[style_prompt(s)][m], n_boot, seed)
        rows.append(StyleRow(s, int(m.sum()), [float(ok[p][m].mean()) for p in prompts], vs_photo))
    own = np.array([STYLES.index(s) for s in image_styles])  # (N,) each image's framing
    table = np.stack([ok[p] for p in prompts]).astype(np.float64)  # (framings, N)
    matched = table[own, np.arange(len(own))]
    others = (table.sum(0) - matched) / (len(prompts) - 1)
    pairs = [PromptTest(a, b, paired_test(ok[a], ok[b], n_boot, seed)) for a, b in combinations(report_prompts, 2)]
    words = {p: text.word_styles(p) for p in [*report_prompts, photo]} if text is not None else {}
    return StyleStudy(name, prompts, list(STYLES), rows, paired_bootstrap(others, matched, n_boot=n_boot, seed=seed).reported(), pairs,
                      PromptTest(BARE, photo, paired_test(ok[BARE], ok[photo], n_boot, seed)),
                      PromptTest(photo, f"ensemble: {len(templates)} templates", paired_test(ok[photo], ok["ensemble"], n_boot, seed)),
                      words, list(text.styles) if text is not None else [])
