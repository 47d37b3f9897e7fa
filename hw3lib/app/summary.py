"""The report's summary: `figures/summary.md` and its JSON twin, built from the notebooks' typed
outputs (figures/p*_summary.json) and the demo models' metrics. The notebooks import the section
builders to show the same tables inline.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import HW3Error
from ..core.files import atomic_write_json, atomic_write_text, read_json
from ..core.results import (
    CountZeroShot,
    Difference,
    FrequencyStudy,
    Interval,
    Localisation,
    NegationScores,
    P1Summary,
    P3Summary,
    PairedTest,
    PromptTest,
    Share,
    StyleStudy,
    VariantRow,
    VariantTable,
)
from ..demo.models_record import DemoModels

_MARKUP = re.compile(r"([\\`*_\[\]!|~<>&])")  # what can start Markdown or HTML markup in a line; | ends a cell


def md_text(text) -> str:
    """A string from data or a model (a caption, a file name, a prompt) as Markdown that shows exactly that
    text: one line, every character that could start markup (Markdown's or HTML's) backslash-escaped, as
    CommonMark allows for any punctuation. The one escaping rule of every page the report writes
    (summary.md, the index page, the notebooks' tables)."""
    return _MARKUP.sub(r"\\\1", " ".join(str(text).split()))


def _pct(x):
    return "-" if x is None else f"{x * 100:.1f}%"


def _ci(ci: Interval | None, pct=True):
    f = _pct if pct else (lambda v: f"{v:.3f}")
    return f"{f(ci.low)} - {f(ci.high)}" if ci else ""


def _delta(d: Difference | PairedTest | None, scale: float = 1.0, fmt: str = "+.3f", unit: str = "") -> str:
    """A paired difference with its interval: "+0.012 [-0.010, +0.034]" ("" when absent)."""
    if d is None:
        return ""
    return f"{d.difference * scale:{fmt}}{unit} [{d.ci.low * scale:{fmt}}, {d.ci.high * scale:{fmt}}]"


def demo_models_section(models: DemoModels) -> tuple[dict, list[str]]:
    mm = models.metrics
    keys = ("clip_recall_at_1_val", "clip_recall_chance", "clip_zero_shot", "negation_clip_recall_at_1_val",
            "counting_clip_recall_at_1_val", "counting_clip_zero_shot", "decoder_perplexity_val", "decoder_vocab_size",
            "seconds")
    d = {k: v for k, v in mm.to_json().items() if k in keys and v is not None}
    lines = ["## Demo models (pretrained in-project)", "",
             f"- tiny CLIP image-to-text recall@1 on val pairs: {mm.clip_recall_at_1_val:.3f} "
             f"(chance {mm.clip_recall_chance:.4f})"]
    for name, z in mm.clip_zero_shot.items():
        what = {"probe": "held-out single-object scenes", "val_single_object": "single-object val images"}[name]
        lines.append(f"- tiny CLIP zero-shot on {z.n} {what}: shape {_pct(z.shape_accuracy)}, "
                     f"colour {_pct(z.color_accuracy)} (targets >= 90% / >= 95%; chance 10%)")
    t = models.pretraining_text()
    if t is not None:
        common = max(t.framings, key=t.frequency)
        lines.append(f"- its pretraining text: {t.captions} captions in {len(t.framings)} framings (most common "
                     f"{md_text(repr(common))}, {t.frequency(common):.1%}) under images in {len(t.styles)} render styles, "
                     f"{t.matched_share():.1%} of captions framed by their image's style; no negation word")
    if mm.negation_clip_recall_at_1_val is not None:
        lines.append(f"- the negation-aware CLIP (fine-tuned on counterfactual pairs): recall@1 "
                     f"{mm.negation_clip_recall_at_1_val:.3f}")
    if mm.counting_clip_recall_at_1_val is not None:
        z = mm.counting_clip_zero_shot.get("probe")
        lines.append(f"- the count-aware CLIP (fine-tuned on counterfactual counts, Paiss et al. 2023): recall@1 "
                     f"{mm.counting_clip_recall_at_1_val:.3f}" + ("" if z is None else
                     f"; zero-shot on {z.n} held-out single-object scenes: shape {_pct(z.shape_accuracy)}, colour "
                     f"{_pct(z.color_accuracy)}"))
    lines += [f"- tiny GPT-2 perplexity on val captions: {mm.decoder_perplexity_val:.2f} "
              f"(vocabulary {mm.decoder_vocab_size})", ""]
    return d, lines


def p1_section(doc: dict | P1Summary) -> list[str]:
    summary = doc if isinstance(doc, P1Summary) else P1Summary.from_json(doc, "p1_summary.json")
    p1 = summary.prompts
    lines = ["## P1: zero-shot accuracy by prompt", "",
             f"{p1.n_images} images, chance {_pct(p1.chance)}. 95% bootstrap intervals.", "",
             "| prompt | templates | accuracy | 95% CI |", "|---|---:|---:|---|"]
    lines += [f"| {md_text(r.prompt)} | {r.templates} | {_pct(r.accuracy)} | {_ci(r.ci)} |" for r in p1.rows]
    lines += ["", "Paired tests against the first prompt (exact McNemar; paired bootstrap 95% interval):", ""]
    lines += [f"- {md_text(repr(t.b))}: {_delta(t.test, 100, '+.1f', ' points')}, p = {t.test.p_value:.3g}" for t in p1.paired_tests]
    s = p1.selection
    lines += ["", f"Template selection (chosen on half the images, scored on the other half): best single "
              f"{_pct(s.held_out_accuracy_best_single)}, all {s.pool} {_pct(s.held_out_accuracy_all)}, "
              f"{len(s.chosen)} selected {_pct(s.held_out_accuracy_selected)}.", ""]
    if summary.negation:
        neg = summary.negation
        lines += [f"Negation ({md_text(repr(neg.positive))} vs {md_text(repr(neg.negated))}): mean cosine of their text embeddings "
                  f"{neg.cosine_mean:.3f} (per class {min(neg.cosine_per_class):.3f} - "
                  f"{max(neg.cosine_per_class):.3f}); same predicted class on {_pct(neg.same_prediction)} of "
                  f"images; accuracy positive {_pct(neg.positive_accuracy.accuracy)}, negated "
                  f"{_pct(neg.negated_accuracy.accuracy)}, negated read inverted "
                  f"{_pct(neg.negated_inverted_accuracy.accuracy)} ({_ci(neg.negated_inverted_accuracy.ci)}).", ""]
    if summary.styles:
        lines += style_lines(summary.styles[0]) + style_ablation_lines(summary.styles)
    if summary.frequency:
        lines += frequency_lines(summary.frequency)
    if summary.negation_experiment:
        lines += negation_experiment_lines(summary.negation_experiment)
    if summary.counting:
        lines += counting_lines(summary.counting)
    return lines


def counting_lines(rows: list[CountZeroShot]) -> list[str]:
    """The CountBench-style test: which of "a picture of one / two / three shapes" fits, per CLIP."""
    counts = sorted({n for r in rows for n in r.by_count}, key=int)
    lines = [f"Counting, CountBench-style (Paiss et al. 2023): which of \"a picture of one / two / three shapes\" "
             f"fits each of {rows[0].n} P2 val images, whose object counts boxes.json knows (chance "
             f"{_pct(rows[0].chance)}):", "",
             "| CLIP | accuracy [95% CI] | " + " | ".join(f"{n} object{'s' if n != '1' else ''}" for n in counts) + " |",
             "|---|---|" + "---:|" * len(counts)]
    lines += [f"| {md_text(r.clip)} | {_pct(r.accuracy.accuracy)} [{_ci(r.accuracy.ci)}] | "
              + " | ".join(_pct(r.by_count.get(n)) for n in counts) + " |" for r in rows]
    return lines + [""]


def _test(t: PromptTest) -> str:
    x = t.test
    return (f"{md_text(repr(t.b))} {_pct(x.accuracy_b)} vs {md_text(repr(t.a))} {_pct(x.accuracy_a)}: "
            f"{_delta(x, 100, '+.1f', ' points')}, McNemar p = {x.p_value:.3g}")


def style_ablation_lines(studies: list[StyleStudy]) -> list[str]:
    if len(studies) < 2:
        return []
    lines = ["Why the design mattered: the same measures for the CLIP before its style phase (the old design) "
             "and after it.", "",
             "| CLIP | styles where own framing beats 'a photo of' | own vs other framings | 'a photo of a {object}.' vs bare name "
             "| 80-template ensemble vs 'a photo of a {object}.' | smallest McNemar p, report's prompts |",
             "|---|---:|---:|---:|---:|---:|"]
    for st in studies:
        lines.append(f"| {md_text(st.clip)} | {len(st.clear_styles())} of {len(st.compared())} "
                     f"| {_delta(st.matched_vs_mismatched, 100, '+.1f', ' pts')} | {_delta(st.bare_vs_photo.test, 100, '+.1f', ' pts')} "
                     f"| {_delta(st.ensemble_vs_photo.test, 100, '+.1f', ' pts')} "
                     f"| {min(t.test.p_value for t in st.report_pairs):.3g} |")
    return lines + [""]


def style_lines(st: StyleStudy) -> list[str]:
    lines = [f"### P1: prompts by image style (demo world, {md_text(st.clip)} CLIP)", "",
             "Accuracy of each style's framing as a prompt (columns) on each style's images (rows); the last "
             "column is the style's own framing minus 'a photo of a {object}' on its images (paired bootstrap 95% "
             "interval, McNemar p).", "",
             "| style (images) | " + " | ".join(md_text(repr(p)) for p in st.prompts) + " | own framing vs 'a photo of' |",
             "|---|" + "---:|" * len(st.prompts) + "---|"]
    for r in st.rows:
        v = r.matched_vs_photo
        own = "-" if v is None else f"{_delta(v, 100, '+.1f', ' points')}, p = {v.p_value:.3g}"
        cells = [f"**{a * 100:.1f}%**" if ps == r.style else f"{a * 100:.1f}%"
                 for a, ps in zip(r.accuracy, st.prompt_styles, strict=True)]
        lines.append(f"| {r.style} ({r.images}) | " + " | ".join(cells) + f" | {own} |")
    clear = st.clear_styles()
    d = st.matched_vs_mismatched
    lines += ["", f"Styles whose own framing beats 'a photo of' with the interval clear of 0: {len(clear)} of "
              f"{len(st.compared())} ({', '.join(clear) or 'none'}). Per image, its "
              f"style's framing minus the mean of the others: {_delta(d, 100, '+.1f', ' points')}.", "",
              "The report's prompts, each pair on all images:", ""]
    lines += [f"- {_test(t)}" for t in st.report_pairs]
    lines += ["", f"- CLIP's default vs the bare class name: {_test(st.bare_vs_photo)}",
              f"- the 80-template ensemble vs CLIP's default: {_test(st.ensemble_vs_photo)}", ""]
    if st.word_styles:
        lines += ["Where the prompts' words came from (share of each framing word's pretraining occurrences by image "
                  "style, styles at 10% or more):", ""]
        lines += [f"- {md_text(repr(p))}: " + "; ".join(
            f"{md_text(repr(w))} " + ", ".join(f"{s} {v:.0%}" for s, v in zip(st.styles, shares, strict=True) if v >= 0.1)
            for w, shares in ws.items()) + ("" if ws else "no framing word") for p, ws in st.word_styles.items()]
        lines.append("")
    return lines


def frequency_lines(freq: FrequencyStudy) -> list[str]:
    lines = ["### P1: prompt accuracy and the pretraining text (demo world)", "",
             "Each framing of the demo CLIP's training text as a prompt, beside its share of the text "
             "(five framings of OpenAI templates it never read at 0):", "",
             "| framing | share of training captions | accuracy | 95% CI |", "|---|---:|---:|---|"]
    lines += [f"| {md_text(r.framing)} | {r.frequency * 100:.2f}% | {_pct(r.accuracy.accuracy)} | {_ci(r.accuracy.ci)} |"
              for r in freq.framings]
    c, t = freq.framing_correlation, freq.template_correlation
    lines += ["", f"Spearman rho of accuracy and framing frequency: {c.rho:+.3f} (permutation p = {c.p_value:.3g}, "
              f"n = {c.n}). Over the report's prompts and OpenAI's templates, accuracy against the frequency of "
              f"their words: rho {t.rho:+.3f} (p = {t.p_value:.3g}, n = {t.n}). The report's prompts:", ""]
    lines += [f"- {md_text(repr(r.framing))}: {_pct(r.accuracy.accuracy)} ({_ci(r.accuracy.ci)}); words never read: "
              f"{', '.join(r.unseen_words) or 'none'}" for r in freq.templates[:freq.report_prompts]]
    return lines + [""]


def negation_experiment_lines(scores: list[NegationScores]) -> list[str]:
    types = list(scores[0].choice.by_type)
    lines = ["### P1: negation learned from counterfactual images (demo world)", "",
             f"The base CLIP, the base CLIP with negation read by sign (score('no X') := -score('X'), an "
             f"inference-time bound), and the CLIP fine-tuned on counterfactual pairs (a scene and the same scene "
             f"with one object's shape redrawn; text tower and projections trained). Multiple choice: {scores[0].choice.items} P2 val "
             f"images, one true statement among {round(1 / scores[0].choice.chance)} (chance "
             f"{_pct(scores[0].choice.chance)}). 95% bootstrap intervals.", "",
             "| CLIP | negated prompt read inverted | multiple choice | " + " | ".join(f"MC {k}" for k in types)
             + " | recall@1 | cos(positive, negated) |", "|---|---:|---:|" + "---:|" * len(types) + "---:|---:|"]
    for sc in scores:
        inv = sc.negation.negated_inverted_accuracy
        lines.append(f"| {md_text(sc.name)} | {_pct(inv.accuracy)} ({_ci(inv.ci)}) | {_pct(sc.choice.accuracy.accuracy)} "
                     f"({_ci(sc.choice.accuracy.ci)}) | " + " | ".join(_pct(sc.choice.by_type[k].accuracy) for k in types)
                     + f" | {_pct(sc.recall_at_1.accuracy)} ({_ci(sc.recall_at_1.ci)}) | {sc.negation.cosine_mean:.3f} |")
    return lines + [""]


def _share(x: Share | None, ci: bool = True) -> str:
    if x is None or x.share is None:
        return "-"
    return f"{x.percent()} [{_ci(x.ci)}]" if ci else x.percent()


def _of(x: Share | None) -> str:
    """A share with its counts: "40.5% (17/42)"."""
    return "-" if x is None or x.share is None else f"{x.percent()} ({x.right}/{x.total})"


def p2_section(doc: dict | VariantTable) -> list[str]:
    p2 = doc if isinstance(doc, VariantTable) else VariantTable.from_json(doc)
    demo = any(r.objects for r in p2.rows)
    lines = ["## P2: PEFT variants (val split, greedy)", "",
             f"CIDEr-D with the {p2.tokenizer} tokenizer; CLIPScore with the manifest's CLIP; 95% bootstrap "
             "intervals over images."]
    lines += _object_tables(p2) if demo else _plain_table(p2)
    lines += _reference_lines(p2, demo) + _decoding_lines(p2) + diagnosis_lines(p2) + ablation_lines(p2)
    lines += shown_lines(p2) + spatial_lines(p2)
    b = p2.best
    lines += ["", f"Best by CIDEr: {b.variant} (CIDEr {b.CIDEr:.3f}, CLIPScore {b.CLIPScore:.3f}"
              + (f", exact scene {_share((b.objects or {}).get('exact'), False)})." if demo else ").")]
    if p2.beam:
        bm = p2.beam
        lines += [f"Beam {bm.beams}: CIDEr {bm.CIDEr:.3f} [{_ci(bm.ci.get('CIDEr'), False)}], CLIPScore "
                  f"{bm.CLIPScore:.3f}" + (f", exact scene {_share((bm.objects or {}).get('exact'), False)}, repeats "
                                           f"{_share((bm.objects or {}).get('repeats'), False)}" if demo else "")
                  + f"; beam minus greedy: CIDEr {_delta((bm.vs_reference or {}).get('CIDEr'))}."]
    return lines + [""]


def _plain_table(p2: VariantTable) -> list[str]:
    """The variants on real data: CIDEr and CLIPScore."""
    return ["", "| variant | PEFT | trainable | CIDEr [95% CI] | CLIPScore [95% CI] |", "|---|---|---:|---|---|"] + [
        f"| {md_text(r.variant)} | {md_text(r.peft)} | {r.trainable:,} | {r.CIDEr:.3f} [{_ci(r.ci.get('CIDEr'), False)}] | "
        f"{r.CLIPScore:.3f} [{_ci(r.ci.get('CLIPScore'), False)}] |" for r in p2.rows]


def _object_tables(p2: VariantTable) -> list[str]:
    """The variants on the demo world: object metrics, by scene size, the anatomy, word grounding."""
    lines = ["Objects (demo world): each caption's (colour, shape) mentions against the image's objects as "
             "multisets (`objects.py`): exact scene = every object named once and nothing else; recall = "
             "objects named / objects; precision = mentions that take an object / mentions; CHAIR-s = "
             "captions naming a (colour, shape) the image does not hold; repeats = captions naming a present "
             "object more often than it is there.", "",
             "| variant | PEFT | trainable | exact scene [95% CI] | object recall [95% CI] | precision | CHAIR-s "
             "| repeats | relations true (of checkable) | CIDEr [95% CI] | CLIPScore |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---|---:|"]
    for r in p2.rows:
        o = r.objects or {}
        lines.append("| " + " | ".join([
            md_text(r.variant), md_text(r.peft), f"{r.trainable:,}", _share(o.get("exact")), _share(o.get("recall")),
            _share(o.get("precision"), False), _share(o.get("chair_s"), False), _share(o.get("repeats"), False),
            _of(r.relations), f"{r.CIDEr:.3f} [{_ci(r.ci.get('CIDEr'), False)}]", f"{r.CLIPScore:.3f}"]) + " |")
    counts = sorted({n for r in p2.rows for n in (r.objects_by_count or {})}, key=int)
    lines += ["", "Exact scene by the number of objects in the image (recall in brackets):", "",
              "| variant | " + " | ".join(f"{n} object{'s' if n != '1' else ''} ({_images(p2, n)} images)"
                                         for n in counts) + " |", "|---|" + "---:|" * len(counts)]
    for r in p2.rows:
        by = r.objects_by_count or {}
        lines.append(f"| {md_text(r.variant)} | " + " | ".join(
            f"{_share(by.get(n, {}).get('exact'), False)} ({_share(by.get(n, {}).get('recall'), False)})"
            for n in counts) + " |")
    lines += anatomy_lines(p2, counts)
    lines += ["", "Word-level grounding, which cannot see repeats or omissions (a repeated mention counts as "
              "right, an object left out is not counted): the share of (colour, shape) mentions whose type the "
              "image holds, and of shape and colour words.", "",
              "| variant | mentions of a held type | shape words | colour words |", "|---|---:|---:|---:|"]
    for r in p2.rows:
        g = r.grounding or {}
        lines.append(f"| {md_text(r.variant)} | {_share(g.get('mentions'), False)} | {_share(g.get('shapes'), False)} | "
                     f"{_share(g.get('colors'), False)} |")
    return lines


def _reference_lines(p2: VariantTable, demo: bool) -> list[str]:
    """Each variant minus the reference on the same images."""
    lines: list[str] = []
    if p2.reference:
        cols = (["exact", "recall", "repeats"] if demo else []) + ["CIDEr", "CLIPScore"]
        names = {"exact": "exact scene", "recall": "object recall", "repeats": "repeats"}
        lines += ["", f"Each variant minus {p2.reference} (the report's setting) on the same images: paired bootstrap "
                  "95% intervals (an interval that contains 0 is no detectable difference):", "",
                  "| variant | " + " | ".join(f"delta {names.get(c, c)}" for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for r in p2.rows:
            d = r.vs_reference
            if d:
                lines.append(f"| {md_text(r.variant)} | " + " | ".join(
                    _delta(d.get(c), 100, "+.1f", " pts") if c in names else _delta(d.get(c)) for c in cols) + " |")
    return lines


def _decoding_lines(p2: VariantTable) -> list[str]:
    """The decoding controls on the best variant."""
    lines: list[str] = []
    if p2.decoding:
        lines += ["", f"Decoding controls on {p2.best.variant} (greedy; transformers' `no_repeat_ngram_size` and "
                  "`repetition_penalty`); deltas against the first row on the same images:", "",
                  "| decoding | exact scene [95% CI] | object recall | repeats | CHAIR-s | CIDEr | delta exact scene "
                  "| delta CIDEr |", "|---|---|---:|---:|---:|---:|---|---|"]
        for r in p2.decoding:
            o, d = r.objects or {}, r.vs_reference or {}
            lines.append(f"| {md_text(r.variant)} | {_share(o.get('exact'))} | {_share(o.get('recall'), False)} | "
                         f"{_share(o.get('repeats'), False)} | {_share(o.get('chair_s'), False)} | {r.CIDEr:.3f} | "
                         f"{_delta(d.get('exact'), 100, '+.1f', ' pts')} | {_delta(d.get('CIDEr'))} |")
    return lines


def diagnosis_lines(p2: VariantTable) -> list[str]:
    """The linear probes of the encoder, and the last validation of every run (held-out training images)."""
    lines = []
    if p2.probe:
        lines += ["", "Diagnosis 1, the encoder: linear probes of the frozen encoder's tokens, fitted on training "
                  "images, scored on the val images (`metrics/probe.py`):", "",
                  "| encoder | read off | accuracy | chance |", "|---|---|---:|---:|"]
        lines += [f"| {md_text(r.encoder or 'the encoder')} | {md_text(r.task)} | {_pct(r.accuracy)} | {_pct(r.chance)} |"
                  for r in p2.probe]
    last = {name: c[-1] for name, c in p2.curves.items() if c and c[-1].exact is not None}
    if last:
        lines += ["", "Diagnosis 2, the decoder's attention, at the last validation of each run (held-out training "
                  "images; every validation is in `figures/p2_learning_curves.png`): the pointing game (the rule P3 "
                  "plays, `core/patches.py`) on the cross-attention averaged over all layers and heads, teacher-forced: "
                  "is its most attended patch one the named object covers, over the phrase that names it and where "
                  "the phrase begins (where the next object is chosen)? P3's numbers below read the last layer's "
                  "attention on generated captions, at the noun:", "",
                  "| run | step | exact scene | attention on the named object | on the next object |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {md_text(name)} | {p.step} | {_pct(p.exact)} | {_pct(p.pointing_named)} | {_pct(p.pointing_next)} |"
                  for name, p in last.items()]
    return lines


def ablation_lines(p2: VariantTable) -> list[str]:
    """The reference variant under each recipe, against the recipe every variant trains with."""
    if not p2.ablation:
        return []
    ref = p2.rows_by_name()[p2.reference]
    lines = ["", f"What each mechanism bought: {p2.reference} trained under other recipes, minus {p2.reference} "
             "with the report's recipe, on the same val images (paired bootstrap 95% intervals); relations = stated "
             "relations between two named objects that are true of the image (`metrics/relations.py`):", "",
             "| recipe | exact scene | 3-object scenes | right count | object recall | repeats | CHAIR-s | "
             "relations true | delta exact scene | delta right count | delta repeats |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in [ref, *p2.ablation]:
        o, d = r.objects or {}, r.vs_reference or {}
        name = f"{r.variant} (the recipe)" if r is ref else r.variant
        name += f" (deltas against: {r.against})" if r.against else ""
        lines.append(f"| {md_text(name)} | {_share(o.get('exact'), False)} | "
                     f"{_share((r.objects_by_count or {}).get('3', {}).get('exact'), False)} | "
                     f"{_share(o.get('right_count'), False)} | "
                     f"{_share(o.get('recall'), False)} | {_share(o.get('repeats'), False)} | "
                     f"{_share(o.get('chair_s'), False)} | {_of(r.relations)} | "
                     + " | ".join(_delta(d.get(m), 100, '+.1f', ' pts') for m in ("exact", "right_count", "repeats"))
                     + " |")
    return lines


def shown_description(r: VariantRow) -> str:
    """How the shown captioner was trained: its steps, and why it stopped."""
    why = "stopped when its held-out curve stopped rising" if r.stopped else "its step budget ran out, still rising"
    return f"{r.steps} steps: {why}; checkpoint of step {r.best_step}"


def shown_lines(p2: VariantTable) -> list[str]:
    """The captioner the report shows (P3, the examples): trained until its held-out curve stopped rising."""
    r = p2.shown
    if r is None:
        return []
    encoder = " on the count-aware encoder" if r.assets else ""
    line = (f"The captioner the report shows (P3, the examples): {p2.reference} with the recipe{encoder}, trained "
            f"past the comparison's equal steps, with early stopping on its held-out training images "
            f"({shown_description(r)}): "
            f"CIDEr {r.CIDEr:.3f} [{_ci(r.ci.get('CIDEr'), False)}]")
    o = r.objects
    if o:
        line += (f", exact scene {_share(o.get('exact'))}, 3-object scenes "
                 f"{_share((r.objects_by_count or {}).get('3', {}).get('exact'))}, right count "
                 f"{_share(o.get('right_count'))}, object recall {_share(o.get('recall'))}, repeats "
                 f"{_share(o.get('repeats'))}, CHAIR-s {_share(o.get('chair_s'))}, relations true {_of(r.relations)}")
    return ["", line + "."]


def spatial_lines(p2: VariantTable) -> list[str]:
    """Where (demo world): each relation word and the region statements of every row, true of the image."""
    from ..metrics.relations import SPATIAL_KINDS

    rows = [r for r in [*p2.rows, *p2.ablation, *([p2.shown] if p2.shown else [])] if r.spatial]
    if not rows:
        return []
    lines = ["", "Where (demo world): the statements of where in each row's captions, checked against the boxes "
             "(`metrics/relations.py`): each relation word (X's centre on that side of Y's) and the regions ('in "
             "the top left': the object's centre in that third of the image, the grammar's own rule); true / "
             "checkable of stated (a statement is checkable when its phrases each name one object of the image):",
             "", "| row | " + " | ".join(f'"{k}"' if k != "region" else "regions" for k in SPATIAL_KINDS) + " |",
             "|---|" + "---:|" * len(SPATIAL_KINDS)]
    for r in rows:
        name = f"{r.variant} (shown)" if r is p2.shown else r.variant
        lines.append(f"| {md_text(name)} | " + " | ".join(
            r.spatial[k].cell() if k in r.spatial else "-" for k in SPATIAL_KINDS) + " |")
    return lines


def anatomy_lines(p2: VariantTable, counts: list[str]) -> list[str]:
    """The failure anatomy (`objects.failure_kind`) per variant and scene size; nothing for an older table."""
    from ..metrics.objects import ANATOMY

    rows = [r for r in p2.rows if any("too_few" in v for v in (r.objects_by_count or {}).values())]
    if not rows:
        return []
    lines = ["", "How the captions fail, by the number of objects in the image (shares of that scene size's "
             "captions; the five sum to 100%): too few or too many objects named; the right number with one "
             "object named twice (and another missed); the right number, none twice, with a colour or shape the "
             "image does not hold (`figures/p2_anatomy.png`):", "",
             "| variant | objects | exact | too few | too many | right count, one named twice | right count, a colour "
             "or shape wrong |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for n in counts:
            by = r.objects_by_count.get(n, {})
            lines.append(f"| {md_text(r.variant)} | {n} | " + " | ".join(_of(by.get(k)) for k in ANATOMY) + " |")
    return lines


def _images(p2: VariantTable, n: str) -> int:
    """How many val images hold `n` objects (from the first row that has the breakdown)."""
    for r in p2.rows:
        x = (r.objects_by_count or {}).get(n, {}).get("exact")
        if x is not None:
            return x.total
    return 0


def p3_section(doc: dict | P3Summary) -> list[str]:
    p3 = doc if isinstance(doc, P3Summary) else P3Summary.from_json(doc, "p3_summary.json")
    lines = ["## P3: attention", ""]
    lines += [f"- {md_text(k)}: {md_text(v.image)} (CLIPScore {v.CLIPScore:.3f}): {md_text(v.caption)}" for k, v in p3.extremes.items()]
    loc = p3.localisation
    if loc and loc.nouns:
        lines += ["", f"Localisation of object nouns ({loc.nouns} nouns that name an object of the image; the "
                  "pointing game: is the map's most attended patch one the object covers; 95% intervals over images; "
                  "delta: paired bootstrap against random maps):", "",
                  "| method | pointing game [95% CI] | delta vs random | deletion score (lower is better) |",
                  "|---|---|---|---:|"]
        for m, v in loc.pointing.items():
            d = (loc.deletion_auc or {}).get(m)
            lines += [f"| {md_text(m)} | {_pct(v)} [{_ci(loc.pointing_ci.get(m))}] | "
                      f"{_delta(loc.vs_random.get(m), 100, '+.1f', ' pts')} | {'' if d is None else f'{d:.3f}'} |"]
        by = loc.pointing_by_shape
        if by:
            methods = list(loc.pointing)
            lines += ["", "Pointing game by shape:", "", "| shape | nouns | " + " | ".join(methods) + " |",
                      "|---|---:|" + "---:|" * len(methods)]
            lines += [f"| {md_text(sh)} | {v['nouns']} | " + " | ".join(_pct(v[m]) for m in methods) + " |"
                      for sh, v in by.items() if v["nouns"]]
        if loc.wrong_words:
            lines += ["", f"Where the map of a wrong shape noun points ({loc.wrong_nouns} nouns that repeat an object "
                      "already named or name a type the image lacks): at an object of the type the word names, at "
                      "another object of the image, or at no object:", "",
                      "| method | the named type | another object | no object |", "|---|---:|---:|---:|"]
            lines += [f"| {md_text(m)} | {_pct(w['named'])} | {_pct(w['other'])} | {_pct(w['none'])} |"
                      for m, w in loc.wrong_words.items()]
        ph = loc.pointing_per_layer_head
        if ph:
            import numpy as np

            a = np.asarray(ph)
            li, hi = np.unravel_index(int(a.argmax()), a.shape)
            lines += ["", f"Best single layer/head for pointing: layer {li}, head {hi} ({_pct(a[li, hi])})."]
    return lines + [""]


def write_summary(figures: Path, models: DemoModels | None, files: list[str] | None = None) -> dict:
    """figures/summary.md + summary.json from the notebooks' JSON outputs (and demo-model metrics);
    `files` (every file the run wrote in figures/) is recorded in summary.json."""
    doc: dict = {}
    lines = ["# hw3lib report summary", "",
             "Generated by `make report` from the notebooks' outputs. Figures are beside this file.", ""]
    if models is not None:
        doc["demo_models"], part = demo_models_section(models)
        lines += part
    for name, section in (("p1", p1_section), ("p2", p2_section), ("p3", p3_section)):
        if (figures / f"{name}_summary.json").is_file():
            doc[name] = read_json(figures / f"{name}_summary.json")
            lines += section(doc[name])
    if files is not None:
        doc["files"] = sorted(set(files) | {"summary.md", "summary.json"})
    atomic_write_text(figures / "summary.md", "\n".join(lines))
    atomic_write_json(figures / "summary.json", doc)
    return doc


# ----------------------------------------------------------------------------------------------
# numbers quoted in README.md and docs/: generated blocks, refreshed by the report, checked by a test


def p2_headline(p2: VariantTable) -> list[str]:
    """The README's P2 rows: the best variant, the shown captioner, the first design, the count probe and
    the causal row."""
    lines = []
    best = p2.best
    exact, recall = best.score("exact")[0], best.score("recall")[0]
    rel = best.relations.share if best.relations else None
    lines.append(f"| P2 | best variant ({best.variant}): scenes named exactly / object recall / relations true / "
                 f"CIDEr | {_pct(exact)} / {_pct(recall)} / {_pct(rel)} / {best.CIDEr:.3f} |")
    sh = p2.shown
    if sh is not None and sh.objects:
        o = sh.objects
        lines.append(f"| P2 | the captioner the report shows ({shown_description(sh)}): scenes named exactly / "
                     f"3-object scenes / right count / repeats / object recall / CHAIR-s | {_pct(o['exact'].share)} / "
                     f"{_pct(sh.objects_by_count['3']['exact'].share)} / {_pct(o['right_count'].share)} / "
                     f"{_pct(o['repeats'].share)} / {_pct(o['recall'].share)} / {_pct(o['chair_s'].share)} |")
    first = next((r for r in p2.ablation if r.variant.startswith("first design")), None)
    if first is not None and first.objects:
        lines.append(f"| P2 | {md_text(p2.reference)}, scenes named exactly: the recipe / the first design "
                     f"({md_text(first.variant.split(': ', 1)[-1])}) | "
                     f"{_pct(p2.rows_by_name()[p2.reference].score('exact')[0])} / {_pct(first.score('exact')[0])} |")
    counted = [r for r in p2.probe if r.task == "object count (CLS token)"]
    if len(counted) > 1:
        lines.append("| P2 | encoder count probe (CLS token), " + " / ".join(md_text(r.encoder) for r in counted)
                     + " | " + " / ".join(_pct(r.accuracy) for r in counted) + " |")
    from ..captioning.study import COUNT_AWARE_ROW

    aware = next((r for r in p2.ablation if r.variant == COUNT_AWARE_ROW), None)
    if aware is not None and aware.vs_reference:
        d = aware.vs_reference
        lines.append(f"| P2 | count-aware minus count-blind encoder, the recipe, paired: exact scene / right count "
                     f"/ repeats | {_delta(d.get('exact'), 100, '+.1f', ' pts')} / "
                     f"{_delta(d.get('right_count'), 100, '+.1f', ' pts')} / {_delta(d.get('repeats'), 100, '+.1f', ' pts')} |")
    return lines


def headline_lines(doc: dict) -> list[str]:
    """The README's results table: one row per part, every number from summary.json."""
    lines = ["| part | measure | result |", "|---|---|---|"]
    probe = (doc.get("demo_models", {}).get("clip_zero_shot") or {}).get("probe")
    if probe:
        lines.append(f"| demo CLIP | zero-shot shape / colour, {probe['n']} held-out single-object scenes | "
                     f"{_pct(probe['shape_accuracy'])} / {_pct(probe['color_accuracy'])} |")
    if "p1" in doc:
        summary = P1Summary.from_json(doc["p1"], "summary.json: p1")
        p1 = summary.prompts
        lines.append(f"| P1 | the report's prompts, zero-shot accuracy ({p1.n_images} images) | "
                     + " / ".join(_pct(r.accuracy) for r in p1.rows[:3]) + " |")
        if summary.styles:
            st = summary.styles[0]
            lines.append(f"| P1 | image styles whose own framing beats 'a photo of' (paired 95% interval above 0) | "
                         f"{len(st.clear_styles())} of {len(st.compared())} |")
        for sc in summary.negation_experiment or []:
            lines.append(f"| P1 | {md_text(sc.name)} CLIP: negated prompt read inverted / multiple choice / recall@1 | "
                         f"{_pct(sc.negation.negated_inverted_accuracy.accuracy)} / {_pct(sc.choice.accuracy.accuracy)} / "
                         f"{_pct(sc.recall_at_1.accuracy)} |")
        if summary.counting:
            lines.append("| P1 | CountBench-style zero-shot count (1-3 objects), " + " / ".join(
                md_text(r.clip) for r in summary.counting) + " CLIP | "
                + " / ".join(_pct(r.accuracy.accuracy) for r in summary.counting) + " |")
        if summary.negation and not summary.negation_experiment:
            neg = summary.negation
            lines.append(f"| P1 | the negated prompt read inverted (chance {_pct(neg.chance)}) | "
                         f"{_pct(neg.negated_inverted_accuracy.accuracy)} |")
    if "p2" in doc:
        lines += p2_headline(VariantTable.from_json(doc["p2"], "summary.json: p2"))
    loc = doc.get("p3", {}).get("localisation")
    if loc:
        loc = Localisation.from_json(loc)
        lines.append("| P3 | pointing game, " + " / ".join(loc.pointing) + " | "
                     + " / ".join(_pct(v) for v in loc.pointing.values()) + " |")
    return lines


QUOTES = {  # block name -> its lines, from summary.json
    "headline": headline_lines,
    "p1": lambda doc: p1_section(doc["p1"]),
    "p2": lambda doc: p2_section(doc["p2"]),
    "p3": lambda doc: p3_section(doc["p3"]),
}
_BLOCK = re.compile(r"(<!-- quote: (\w+) [^\n]*-->\n)(.*?)(<!-- /quote -->)", re.S)


def fill_quotes(text: str, doc: dict, source: str = "document") -> str:
    """`text` with every quoted block (`<!-- quote: NAME ... -->` ... `<!-- /quote -->`) rewritten from
    `doc` (summary.json)."""
    def fill(m):
        if m.group(2) not in QUOTES:
            raise HW3Error(f"{source}: unknown quoted block {m.group(2)!r} (known: {', '.join(QUOTES)})")
        body = "\n".join(QUOTES[m.group(2)](doc)).strip("\n")
        return f"{m.group(1)}{body}\n{m.group(4)}"
    return _BLOCK.sub(fill, text)


def refresh_quotes(paths, doc: dict) -> list[Path]:
    """Rewrite the quoted blocks of each Markdown file from `doc`; the files that changed."""
    changed = []
    for path in map(Path, paths):
        old = path.read_text(encoding="utf-8")
        new = fill_quotes(old, doc, str(path))
        if new != old:
            atomic_write_text(path, new)
            changed.append(path)
    return changed
