"""Figure functions: each takes computed results and returns a matplotlib Figure; the caller saves it.

No model code here and no computation beyond arranging numbers for display.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt  # headless runs fall back to Agg by themselves
import numpy as np

from ..core.results import (
    METRICS,
    CountZeroShot,
    CurvePoint,
    FrequencyStudy,
    Interval,
    Localisation,
    NegationScores,
    NegationStudy,
    ProbeRow,
    PromptRow,
    Selection,
    StyleStudy,
    VariantRow,
)


def save(fig, path: str | Path, dpi: int = 130) -> Path:
    """Save a figure atomically (write, then rename), show it inline when running in a notebook's
    kernel (JupyterLab, papermill), then close it."""
    from ..core.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    if _in_kernel():
        from IPython.display import display

        display(fig)
    plt.close(fig)
    return path


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (where display() reaches the notebook), False in scripts and tests."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


# ----------------------------------------------------------------------------------------------
# P1


def prompt_table_figure(rows: list[PromptRow], chance: float | None = None, title: str = "Zero-shot accuracy by prompt"):
    """Horizontal bars of accuracy with 95% bootstrap intervals, one per prompt or ensemble."""
    names = [textwrap.shorten(r.prompt, 48) for r in rows]
    acc = np.array([r.accuracy for r in rows]) * 100
    lo = acc - np.array([r.ci.low for r in rows]) * 100
    hi = np.array([r.ci.high for r in rows]) * 100 - acc
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    colors = ["#4C72B0" if not r.prompt.startswith("ensemble") else "#DD8452" for r in rows]
    ax.barh(y, acc, xerr=[lo, hi], color=colors, capsize=3)
    for yi, a, h in zip(y, acc, hi, strict=True):
        ax.text(a + h + 1, yi, f"{a:.1f}%", va="center", fontsize=8)
    if chance is not None:
        ax.axvline(chance * 100, color="grey", ls="--", lw=1, label=f"chance {chance * 100:.0f}%")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 105)
    ax.set_xlabel("accuracy (%) with 95% bootstrap CI")
    ax.set_title(title)
    return fig


def per_class_accuracy_figure(class_names: list[str], acc: np.ndarray, title: str = "Per-class accuracy"):
    order = np.argsort(acc)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(class_names)), 3.2))
    ax.bar(range(len(acc)), np.asarray(acc)[order] * 100, color="#4C72B0")
    ax.set_xticks(range(len(acc)), [class_names[i] for i in order], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    return fig


def confusion_figure(cm: np.ndarray, class_names: list[str], title: str = "Confusion matrix (row-normalised)"):
    import seaborn as sns

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(5, 0.32 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    sns.heatmap(norm, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True, cbar_kws={"shrink": 0.7},
                xticklabels=class_names, yticklabels=class_names, annot=len(class_names) <= 12, fmt=".2f",
                annot_kws={"fontsize": 7})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def _image_column(images, width: float, row_height: float, ratio: float, titles: list[str] | None = None):
    """A figure of one row per image: the image on the left, an empty panel `ratio` times as wide on
    its right for the caller to fill. Returns (fig, axes (n, 2))."""
    fig, axes = plt.subplots(len(images), 2, figsize=(width, row_height * len(images)),
                             gridspec_kw={"width_ratios": [1, ratio]}, squeeze=False)
    for i, im in enumerate(images):
        axes[i, 0].imshow(im)
        axes[i, 0].set_axis_off()
        if titles:
            axes[i, 0].set_title(titles[i], fontsize=9)
    return fig, axes


def top_probabilities_figure(images, top: list[list[tuple[str, float]]], true_names: list[str],
                             title: str = "Top-5 class probabilities"):
    fig, axes = _image_column(images, 7, 2.1, 2, [f"true: {t}" for t in true_names])
    for i, (tk, true) in enumerate(zip(top, true_names, strict=True)):
        names = [t[0] for t in tk][::-1]
        probs = [t[1] * 100 for t in tk][::-1]
        colors = ["#55A868" if nm == true else "#4C72B0" for nm in names]
        axes[i, 1].barh(range(len(names)), probs, color=colors)
        axes[i, 1].set_yticks(range(len(names)), names, fontsize=8)
        axes[i, 1].set_xlim(0, 100)
        axes[i, 1].set_xlabel("probability (%)", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def selection_figure(selection: Selection, title: str = "Template ensembles and selection (held-out half)"):
    labels = ["best single\ntemplate", f"all {selection.pool}\ntemplates", f"greedy-selected\n{len(selection.chosen)}"]
    vals = [selection.held_out_accuracy_best_single, selection.held_out_accuracy_all,
            selection.held_out_accuracy_selected]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(labels, np.array(vals) * 100, color=["#4C72B0", "#DD8452", "#55A868"])
    for i, v in enumerate(vals):
        ax.text(i, v * 100 + 1, f"{v * 100:.1f}%", ha="center", fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    return fig


def negation_figure(neg: NegationStudy, title: str | None = None):
    """Left: per class, the cosine similarity of the positive and the negated prompt's text embeddings.
    Right: accuracy of the positive prompt, the negated prompt, and the negated prompt read inverted,
    with 95% intervals, beside how often the two prompts pick the same class."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    cos = np.array(neg.cosine_per_class)
    axes[0].bar(neg.classes, cos, color="#4C72B0")
    axes[0].axhline(neg.cosine_mean, color="#C44E52", ls="--", lw=1, label=f"mean {neg.cosine_mean:.3f}")
    axes[0].set_ylim(min(0.0, cos.min() - 0.05), 1.02)
    axes[0].set_ylabel("cos(text(positive), text(negated))")
    axes[0].tick_params(axis="x", rotation=45, labelsize=8)
    axes[0].legend(fontsize=8, loc="lower right")
    labels = ["positive", "negated", "negated,\ninverted", "same\nprediction"]
    parts = [neg.positive_accuracy, neg.negated_accuracy, neg.negated_inverted_accuracy]
    vals = [p.accuracy for p in parts] + [neg.same_prediction]
    cis = [p.ci for p in parts] + [neg.same_prediction_ci]
    axes[1].bar(labels, np.array(vals) * 100, yerr=np.array(_err(vals, cis)) * 100, capsize=3,
                color=["#4C72B0", "#DD8452", "#55A868", "#8C8C8C"])
    for i, v in enumerate(vals):
        axes[1].text(i, v * 100 + 3, f"{v * 100:.1f}%", ha="center", fontsize=8)
    axes[1].axhline(neg.chance * 100, color="grey", ls=":", lw=1)
    axes[1].set_ylim(0, 110)
    axes[1].set_ylabel("%")
    fig.suptitle(title or f"Does the text tower read \"not\"? {neg.positive!r} vs {neg.negated!r}", fontsize=10)
    fig.tight_layout()
    return fig


def frequency_figure(freq: FrequencyStudy, chance: float | None = None,
                     title: str = "Prompt accuracy and the CLIP's pretraining text (demo world)"):
    """Left: accuracy of each framing as a prompt against its share of the training captions (framings
    never read at the left edge). Right: the report's prompts (labelled) and OpenAI's templates against
    the mean log frequency of their words. 95% intervals; Spearman's rho in the titles."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    fr = freq.framings
    floor = min([r.frequency for r in fr if r.frequency > 0] or [1e-3]) / 3  # where "never" is drawn
    x = np.array([r.frequency if r.frequency > 0 else floor for r in fr])
    y = np.array([r.accuracy.accuracy for r in fr])
    axes[0].errorbar(x, y * 100, yerr=np.array(_err(y, [r.accuracy.ci for r in fr])) * 100, fmt="o", ms=4,
                     capsize=2, color="#4C72B0", ecolor="#9db3d6")
    for xi, yi, r in zip(x, y, fr, strict=True):
        axes[0].annotate(r.framing.replace(" {object}", "").replace("{object}", "(bare)"), (xi, yi * 100),
                         fontsize=6.5, xytext=(3, 2), textcoords="offset points")
    axes[0].axvline(floor * 1.8, color="grey", lw=0.6, ls=":")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("share of training captions in this framing (left of the line: never)")
    axes[0].set_ylabel("zero-shot accuracy (%)")
    c = freq.framing_correlation
    axes[0].set_title(f"framings: Spearman rho {c.rho:+.2f} (p = {c.p_value:.2g}, n = {c.n})", fontsize=9)
    tr = freq.templates
    wx = np.array([r.word_frequency for r in tr])
    wy = np.array([r.accuracy.accuracy for r in tr])
    k = freq.report_prompts
    axes[1].scatter(wx[k:], wy[k:] * 100, s=12, color="#8C8C8C", label="OpenAI templates")
    axes[1].errorbar(wx[:k], wy[:k] * 100, yerr=np.array(_err(wy[:k], [r.accuracy.ci for r in tr[:k]])) * 100,
                     fmt="D", ms=5, capsize=3, color="#C44E52", label="the report's prompts")
    for r in tr[:k]:
        axes[1].annotate(r.framing, (r.word_frequency, r.accuracy.accuracy * 100), fontsize=7, xytext=(4, -9),
                         textcoords="offset points", color="#C44E52")
    axes[1].set_xlabel("mean log10(1 + count per million words) of the template's words")
    c = freq.template_correlation
    axes[1].set_title(f"templates: Spearman rho {c.rho:+.2f} (p = {c.p_value:.2g}, n = {c.n})", fontsize=9)
    axes[1].legend(fontsize=8, loc="lower right")
    for ax in axes:
        if chance is not None:
            ax.axhline(chance * 100, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def style_figure(studies: list[StyleStudy], title: str = "Prompts by image style (demo world)"):
    """Left: the first CLIP's accuracy with each style's framing (columns) on each style's images (rows),
    the matched cells boxed. Right: per style, its own framing minus "a photo of a {object}", with 95%
    paired intervals, for every CLIP (the first, then ablations)."""
    study = studies[0]
    acc = np.array([r.accuracy for r in study.rows]) * 100  # (styles, framings)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.3, 1]})
    im = a.imshow(acc, cmap="viridis", aspect="auto")
    for i, r in enumerate(study.rows):
        for j in range(acc.shape[1]):
            a.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=8,
                   color="white" if acc[i, j] < acc.mean() else "black")
        if r.style in study.prompt_styles:
            j = study.prompt_styles.index(r.style)
            a.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    a.set_xticks(range(len(study.prompts)), [f"'{p.replace(' a {object}', '')}'" for p in study.prompts],
                 rotation=30, ha="right", fontsize=7)
    a.set_yticks(range(len(study.rows)), [f"{r.style} ({r.images})" for r in study.rows], fontsize=8)
    a.set_xlabel("prompt (framing)")
    a.set_ylabel("image style (images)")
    a.set_title(f"accuracy %, {study.clip} CLIP", fontsize=9)
    fig.colorbar(im, ax=a)
    height = 0.8 / len(studies)
    for k, st in enumerate(studies):
        rows = st.compared()
        diffs = [r.matched_vs_photo.difference for r in rows]
        ys = np.arange(len(rows)) + (k - (len(studies) - 1) / 2) * height
        b.barh(ys, np.array(diffs) * 100, height, xerr=np.array(_err(diffs, [r.matched_vs_photo.ci for r in rows])) * 100,
               capsize=2, color=["#55A868", "#8C8C8C", "#4C72B0"][k % 3], label=st.clip.split(" (")[0])
    b.axvline(0, color="black", lw=0.8)
    b.set_yticks(range(len(rows)), [r.style for r in rows], fontsize=8)
    b.invert_yaxis()
    b.legend(fontsize=7, loc="best")
    b.set_xlabel("own framing minus 'a photo of', points (95% paired intervals)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def negation_experiment_figure(scores: list[NegationScores],
                               title: str = "Negation: base CLIP, read by sign, and tuned on counterfactual pairs (demo world)"):
    """Per CLIP: the negated P1 prompt read inverted, the multiple-choice test overall and per question
    type, and image->text recall@1, with 95% intervals; chance levels dotted."""
    names = ["negated prompt,\nread inverted", "multiple\nchoice", *(f"MC:\n{t}" for t in scores[0].choice.by_type),
             "recall@1"]
    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / len(scores)
    colors = ["#8C8C8C", "#55A868", "#4C72B0", "#DD8452"]
    for j, sc in enumerate(scores):
        parts = [sc.negation.negated_inverted_accuracy, sc.choice.accuracy, *sc.choice.by_type.values(), sc.recall_at_1]
        vals = [p.accuracy for p in parts]
        xs = np.arange(len(parts)) + (j - (len(scores) - 1) / 2) * width
        ax.bar(xs, np.array(vals) * 100, width, yerr=np.array(_err(vals, [p.ci for p in parts])) * 100, capsize=2,
               color=colors[j % len(colors)], label=sc.name)
        for xi, v in zip(xs, vals, strict=True):
            ax.text(xi, v * 100 + 4, f"{v * 100:.0f}", ha="center", fontsize=7)
    ax.hlines([scores[0].negation.chance * 100, scores[0].choice.chance * 100], [-0.45, 0.55], [0.45, 1.45 + len(scores[0].choice.by_type)],
              colors="grey", linestyles=":", lw=1)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylim(0, 112)
    ax.set_ylabel("%")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def counting_figure(rows: list[CountZeroShot],
                    title: str = "Can the CLIP count? Which of 'a picture of one / two / three shapes' fits (demo world)"):
    """Per CLIP: the CountBench-style accuracy overall (95% interval) and per true count; chance dotted."""
    counts = list(rows[0].by_count)
    names = ["all", *(f"{n} object{'s' if n != '1' else ''}" for n in counts)]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    width = 0.8 / len(rows)
    colors = ["#8C8C8C", "#55A868", "#4C72B0", "#DD8452"]
    for j, r in enumerate(rows):
        vals = [r.accuracy.accuracy, *(r.by_count.get(n, 0.0) for n in counts)]
        xs = np.arange(len(vals)) + (j - (len(rows) - 1) / 2) * width
        ax.bar(xs, np.array(vals) * 100, width, color=colors[j % len(colors)], label=r.clip)
        ax.errorbar(xs[:1], [vals[0] * 100], yerr=np.array(_err(vals[:1], [r.accuracy.ci])) * 100, fmt="none",
                    ecolor="k", capsize=2, lw=1)  # the interval of the overall accuracy
        tops = [max(vals[0], r.accuracy.ci.high if r.accuracy.ci else 0), *vals[1:]]
        for xi, v, top in zip(xs, vals, tops, strict=True):
            ax.text(xi, top * 100 + 2, f"{v * 100:.0f}", ha="center", fontsize=7)
    ax.axhline(rows[0].chance * 100, color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylim(0, 112)
    ax.set_ylabel("% right")
    ax.legend(fontsize=8, loc="upper left", ncol=len(rows) + 1)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# P2


def _pareto(xs, ys):
    """Indices on the upper-left front: no other point has fewer parameters and a higher score."""
    order = np.argsort(xs)
    front, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return front


def _err(vals, cis: list[Interval | None]):
    """matplotlib's asymmetric error bars from values and intervals (0 where unknown)."""
    lo = [v - c.low if c else 0 for v, c in zip(vals, cis, strict=True)]
    hi = [c.high - v if c else 0 for v, c in zip(vals, cis, strict=True)]
    return [lo, hi]


def variants_figure(rows: list[VariantRow], title: str = "PEFT variants on the val split (greedy, 95% bootstrap intervals)"):
    """One panel per metric (CIDEr, CLIPScore and, on the demo world, mentions grounded), a bar per
    variant with its interval."""
    metrics = [*METRICS] + (["exact"] if any(r.objects for r in rows) else [])
    names = [r.variant for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 0.4 * len(rows) + 1.5), sharey=True)
    y = np.arange(len(rows))[::-1]
    for ax, metric, color in zip(axes, metrics, ["#4C72B0", "#DD8452", "#55A868"], strict=False):
        vals, cis = zip(*(r.score(metric) for r in rows), strict=True)
        vals = [0.0 if v is None else v for v in vals]
        ax.barh(y, vals, xerr=_err(vals, cis), color=color, capsize=2)
        for yi, v in zip(y, vals, strict=True):
            ax.text(v, yi + 0.25, f" {v:.3f}", va="center", fontsize=7)
        ax.set_xlabel("scene named exactly" if metric == "exact" else metric)
        ax.set_xlim(0, max(max(vals) * 1.25, 1e-6))
    axes[0].set_yticks(y, names)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def paired_differences_figure(rows: list[VariantRow], reference: str, title: str | None = None):
    """Each variant minus the reference variant on the same images: paired bootstrap 95% intervals.
    An interval that crosses 0 is a difference the data cannot tell from none."""
    rows = [r for r in rows if r.vs_reference]
    metrics = [m for m in (*METRICS, "exact", "recall") if any(m in r.vs_reference for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.4 * len(rows) + 1.5), sharey=True,
                             squeeze=False)
    y = np.arange(len(rows))[::-1]
    for ax, metric in zip(axes[0], metrics, strict=True):
        d = [r.vs_reference.get(metric) for r in rows]
        vals = [x.difference if x else 0.0 for x in d]
        colors = ["#C44E52" if x and x.ci.excludes(0.0) else "#8C8C8C" for x in d]
        err = _err(vals, [x.ci if x else None for x in d])
        for k, (v, yi, c) in enumerate(zip(vals, y, colors, strict=True)):
            ax.errorbar([v], [yi], xerr=[[err[0][k]], [err[1][k]]], fmt="o", color=c, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"{ {'exact': 'exact scene', 'recall': 'object recall'}.get(metric, metric)} - {reference}")
        ax.grid(alpha=0.3, axis="x")
    axes[0, 0].set_yticks(y, [r.variant for r in rows])
    fig.suptitle(title or f"Paired differences against {reference} (red: interval excludes 0)")
    fig.tight_layout()
    return fig


def grounding_figure(rows: list[VariantRow], title: str = "Do captions name every object once? (demo world)"):
    """Left: per variant, the share of val images whose scene the caption names exactly, overall and by
    the number of objects (1, 2, 3), with 95% intervals. Right: per variant, what goes wrong - objects
    left out (1 - recall), captions that repeat a present object, captions naming an absent one (CHAIR-s)."""
    rows = [r for r in rows if r.objects]
    counts = sorted({n for r in rows for n in (r.objects_by_count or {})}, key=int)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    x = np.arange(len(rows))
    groups = [None, *counts]
    w = 0.8 / len(groups)
    colors = ["#4C72B0", "#8DA0CB", "#55A868", "#C44E52", "#DD8452"]
    for k, n in enumerate(groups):
        vals, cis = zip(*(r.score("exact", n) for r in rows), strict=True)
        vals = [0.0 if v is None else v for v in vals]
        axes[0].bar(x + (k - (len(groups) - 1) / 2) * w, vals, w, yerr=_err(vals, cis), capsize=2,
                    color=colors[k % len(colors)], label="all images" if n is None else f"{n} object{'s' * (n != '1')}")
    axes[0].set_xticks(x, [r.variant for r in rows], rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("scene named exactly")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8, ncol=len(groups))
    parts = [("omitted", "#8C8C8C"), ("repeats", "#DD8452"), ("chair_s", "#C44E52")]
    w = 0.8 / len(parts)
    for k, (metric, color) in enumerate(parts):
        pairs = [r.score("recall") for r in rows] if metric == "omitted" else [r.score(metric) for r in rows]
        if metric == "omitted":  # 1 - recall, and its interval mirrored
            pairs = [(None if v is None else 1 - v, None if c is None else type(c)(1 - c.high, 1 - c.low))
                     for v, c in pairs]
        vals = [0.0 if v is None else v for v, _ in pairs]
        axes[1].bar(x + (k - 1) * w, vals, w, yerr=_err(vals, [c for _, c in pairs]), capsize=2, color=color,
                    label={"omitted": "objects left out (1 - recall)", "repeats": "captions repeating an object",
                           "chair_s": "captions naming an absent object (CHAIR-s)"}[metric])
    axes[1].set_xticks(x, [r.variant for r in rows], rotation=30, ha="right", fontsize=8)
    axes[1].set_ylabel("share")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


ANATOMY_LABELS = {"exact": "exact", "too_few": "too few objects", "too_many": "too many objects",
                  "repeat_right_count": "right count, one named twice", "swapped": "right count, a colour or shape wrong"}


def anatomy_figure(rows: list[VariantRow], title: str = "How captions fail, by the number of objects (demo world)"):
    """One panel per scene size (1, 2, 3 objects): per variant, its captions of that size split into the
    failure anatomy's kinds (`objects.ANATOMY`, which sum to one), as a stacked horizontal bar."""
    from ..metrics.objects import ANATOMY

    rows = [r for r in rows if r.objects_by_count and any("too_few" in v for v in r.objects_by_count.values())]
    counts = sorted({n for r in rows for n in r.objects_by_count}, key=int)
    fig, axes = plt.subplots(1, len(counts), figsize=(4.2 * len(counts), 0.45 * len(rows) + 1.6), sharey=True,
                             squeeze=False)
    colors = dict(zip(ANATOMY, ["#55A868", "#8C8C8C", "#DD8452", "#C44E52", "#8172B2"], strict=True))
    y = np.arange(len(rows))
    for ax, n in zip(axes[0], counts, strict=True):
        left = np.zeros(len(rows))
        for kind in ANATOMY:
            vals = np.array([(r.score(kind, n)[0] or 0.0) for r in rows])
            ax.barh(y, vals, left=left, color=colors[kind], label=ANATOMY_LABELS[kind])
            left += vals
        ax.set_title(f"{n} object{'s' * (n != '1')}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of captions")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(y, [r.variant for r in rows], fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pareto_figure(rows: list[VariantRow], title: str = "Trainable parameters vs caption quality"):
    """Two panels: parameters (log) against CIDEr and against CLIPScore, Pareto front joined."""
    rows = [r for r in rows if r.trainable > 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    xs = np.array([r.trainable for r in rows], dtype=float)
    for ax, metric in zip(axes, METRICS, strict=True):
        ys = np.array([r.score(metric)[0] for r in rows])
        ax.scatter(xs, ys, s=40, color="#4C72B0", zorder=3)
        for r, x, yv in zip(rows, xs, ys, strict=True):
            ax.annotate(r.variant, (x, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = _pareto(xs, ys)
        ax.plot(xs[front], ys[front], color="#C44E52", lw=1.2, ls="--", label="Pareto front", zorder=2)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves_figure(curves: dict, title: str = "Training curves"):
    """Per run (name -> `captioning.runs.TrainingCurves`): the training loss, and the held-out CIDEr."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, c in curves.items():
        axes[0].plot(c.steps, c.loss, label=name, lw=1)
        pts = [(v.step, v.cider) for v in c.validations if v.cider is not None]
        if pts:
            axes[1].plot(*zip(*pts, strict=True), marker="o", label=name, lw=1)
    axes[0].set_xlabel("optimiser step")
    axes[0].set_ylabel("training loss (teacher forcing)")
    axes[0].set_yscale("log")
    axes[1].set_xlabel("optimiser step")
    axes[1].set_ylabel("held-out CIDEr (training images\nnot trained on, greedy)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def greedy_vs_beam_figure(greedy: VariantRow, beam: VariantRow, title: str | None = None):
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for ax, metric in zip(axes, METRICS, strict=True):
        vals = [greedy.score(metric)[0], beam.score(metric)[0]]
        ax.bar(["greedy", f"beam {beam.beams}"], vals, color=["#4C72B0", "#55A868"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
        ax.set_ylabel(metric)
        ax.set_ylim(0, max(vals) * 1.2)
    fig.suptitle(title or f"Decoding: {beam.variant}")
    fig.tight_layout()
    return fig


def caption_examples_figure(images, captions: list[dict[str, str]], references: list[str],
                            title: str = "Example captions"):
    """One row per image: the image, then each model's caption and one reference caption."""
    fig, axes = _image_column(images, 10, 1.9, 4)
    for i, (caps, ref) in enumerate(zip(captions, references, strict=True)):
        lines = [f"{k}: {textwrap.shorten(v, 90)}" for k, v in caps.items()] + [f"reference: {textwrap.shorten(ref, 90)}"]
        axes[i, 1].text(0, 0.5, "\n".join(lines), va="center", fontsize=8, family="monospace")
        axes[i, 1].set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# P3


def token_maps_figure(image, caption: str, tokens: list[str], heats: list[np.ndarray], title: str | None = None,
                      cols: int = 5, alpha: float = 0.5):
    """The image with its caption, then one panel per generated token (the end token included) with
    that token's map overlaid - the report's P3 figure."""
    from ..attention.maps import overlay

    n = len(tokens) + 1
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(image)
    axes[0, 0].set_title(textwrap.fill(caption, 28), fontsize=7)
    for i, (tok, heat) in enumerate(zip(tokens, heats, strict=True), start=1):
        ax = axes.flat[i]
        ax.imshow(overlay(image, heat, alpha=alpha))
        ax.set_title(tok.strip() or repr(tok), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def localisation_figure(loc: Localisation, title: str = "Do the maps find the named object? (demo world)"):
    methods = [m for m in loc.pointing if loc.pointing[m] is not None]
    colors = ["#4C72B0", "#DD8452", "#55A868", "#8C8C8C"]
    fig, axes = plt.subplots(1, 2 if loc.deletion_auc else 1, figsize=(9, 3.2), squeeze=False)
    vals = [loc.pointing[m] for m in methods]
    err = np.array(_err(vals, [loc.pointing_ci.get(m) for m in methods])) * 100
    axes[0, 0].bar(methods, np.array(vals) * 100, yerr=err, capsize=3, color=colors[: len(methods)])
    for i, v in enumerate(vals):
        axes[0, 0].text(i, v * 100 + err[1][i] + 1, f"{v * 100:.0f}%", ha="center", fontsize=8)
    axes[0, 0].set_ylabel("pointing game accuracy (%)")
    axes[0, 0].set_ylim(0, 105)
    axes[0, 0].set_title(f"pointing game ({loc.nouns} object nouns)", fontsize=9)
    if loc.deletion_auc:
        d = [loc.deletion_auc[m] for m in methods]
        axes[0, 1].bar(methods, d, color=colors[: len(methods)])
        axes[0, 1].set_ylabel("mean p(token) while deleting top patches")
        axes[0, 1].set_title("deletion (lower = map found what matters)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def layer_head_figure(per_head, title: str = "Pointing accuracy of raw attention per layer and head"):
    import seaborn as sns

    a = np.asarray(per_head) * 100
    fig, ax = plt.subplots(figsize=(1 + 0.6 * a.shape[1], 0.8 + 0.5 * a.shape[0]))
    sns.heatmap(a, annot=True, fmt=".0f", cmap="magma", vmin=0, vmax=100, ax=ax, cbar_kws={"label": "%"})
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    return fig


def pointing_by_shape_figure(loc: Localisation, title: str = "Pointing game by shape (demo world)"):
    """Grouped bars: per shape named in a caption, each method's pointing accuracy (random included),
    with the number of nouns per shape under its name."""
    per = loc.pointing_by_shape
    shapes = [sh for sh in per if per[sh]["nouns"]]
    methods = list(loc.pointing)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(shapes) + 2), 3.6))
    x = np.arange(len(shapes))
    w = 0.8 / len(methods)
    colors = ["#4C72B0", "#DD8452", "#55A868", "#8C8C8C"]
    for k, m in enumerate(methods):
        ax.bar(x + (k - (len(methods) - 1) / 2) * w, [per[sh][m] * 100 for sh in shapes], w, label=m,
               color=colors[k % len(colors)])
    ax.set_xticks(x, [f"{sh}\n({per[sh]['nouns']})" for sh in shapes], fontsize=8)
    ax.set_ylabel("pointing game accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, ncol=len(methods))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def learning_curves_figure(curves: dict[str, list[CurvePoint]],
                           title: str = "Learning curves on held-out training images (greedy)"):
    """Per run: scene named exactly, and the cross-attention's peak on the next object to be named
    (the pointing game at the position that chooses it), against optimiser steps."""
    panels = [("exact", "scene named exactly"), ("pointing_next", "attention peak on the next object"),
              ("repeats", "captions repeating an object")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.8))
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(curves), 2)))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for (name, points), color in zip(curves.items(), colors, strict=False):
            pts = [(p.step, getattr(p, key)) for p in points if getattr(p, key) is not None]
            if pts:  # a run validated once shows as one point at its last step
                ax.plot(*zip(*pts, strict=True), marker="o", ms=4, lw=1.2, color=color,
                        label=textwrap.shorten(name, 45))
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # below the panels: no curve hidden behind it
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


def probe_figure(rows: list[ProbeRow], title: str = "Linear probes of the frozen encoder's tokens (val images)"):
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    encoders = list(dict.fromkeys(r.encoder for r in rows))  # one colour per encoder probed
    palette = ["#4C72B0", "#55A868", "#DD8452"]
    for k, name in enumerate(encoders):
        mine = [i for i, r in enumerate(rows) if r.encoder == name]
        ax.barh(y[mine], [rows[i].accuracy for i in mine], color=palette[k % len(palette)],
                label="probe" if name is None else f"probe, {name} encoder")
    ax.scatter([r.chance for r in rows], y, color="k", marker="|", s=200, label="chance (most frequent class)")
    for yi, r in zip(y, rows, strict=True):
        ax.text(r.accuracy, yi, f" {r.accuracy * 100:.1f}%", va="center", fontsize=8)
    ax.set_yticks(y, [r.task if r.encoder is None else f"{r.task}, {r.encoder}" for r in rows])
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("accuracy")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(encoders) + 1, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
