"""Figure functions: each takes computed results and returns a matplotlib Figure; the caller saves it.

No model code here and no computation beyond arranging numbers for display.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt  # headless runs fall back to Agg by themselves
import numpy as np


def save(fig, path: str | Path, dpi: int = 130) -> Path:
    """Save a figure atomically (write, then rename) and close it."""
    from .io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# P1


def prompt_table_figure(rows: list[dict], chance: float | None = None, title: str = "Zero-shot accuracy by prompt"):
    """Horizontal bars of accuracy with 95% bootstrap intervals, one per prompt or ensemble."""
    names = [textwrap.shorten(r["prompt"], 48) for r in rows]
    acc = np.array([r["accuracy"] for r in rows]) * 100
    lo = acc - np.array([r["ci_low"] for r in rows]) * 100
    hi = np.array([r["ci_high"] for r in rows]) * 100 - acc
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    colors = ["#4C72B0" if not r["prompt"].startswith("ensemble") else "#DD8452" for r in rows]
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


def top_probabilities_figure(images, top: list[list[tuple[str, float]]], true_names: list[str],
                             title: str = "Top-5 class probabilities"):
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(7, 2.1 * n), gridspec_kw={"width_ratios": [1, 2]}, squeeze=False)
    for i, (im, tk, true) in enumerate(zip(images, top, true_names, strict=True)):
        axes[i, 0].imshow(im)
        axes[i, 0].set_axis_off()
        axes[i, 0].set_title(f"true: {true}", fontsize=9)
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


def selection_figure(selection: dict, title: str = "Template ensembles and selection (held-out half)"):
    labels = ["best single\ntemplate", f"all {selection['pool']}\ntemplates", f"greedy-selected\n{len(selection['chosen'])}"]
    vals = [selection["held_out_accuracy_best_single"], selection["held_out_accuracy_all"],
            selection["held_out_accuracy_selected"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(labels, np.array(vals) * 100, color=["#4C72B0", "#DD8452", "#55A868"])
    for i, v in enumerate(vals):
        ax.text(i, v * 100 + 1, f"{v * 100:.1f}%", ha="center", fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    return fig
