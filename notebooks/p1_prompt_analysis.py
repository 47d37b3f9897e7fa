# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (hw3lib)
#     language: python
#     name: hw3lib
# ---

# %% [markdown]
# # P1 - CLIP zero-shot classification and prompt-text analysis
#
# Reproduces Problem 1 of the report: zero-shot accuracy of CLIP on the P1 validation folder under
# the report's three prompts (60.9 / 65.4 / 56.4 % with ViT-B/32 on the real data), with 95%
# bootstrap intervals, a paired test of whether two prompts really differ, per-class accuracy, the
# confusion matrix, top-5 probabilities of three images, the gain of prompt ensembles and greedy
# template selection, and a negation analysis that explains the report's odd finding ("This is not a
# photo of {object}" scored higher than the positive prompt). By default it runs on the demo world,
# whose P1 classes are the ten shapes in random colours (colour alone gives chance), drawn in six render
# styles whose framings the demo CLIP read together with them; point `data_dir` /
# `assets` at a real `hw3_data/` and `--assets real` (ViT-B-32/openai) for the report's numbers.

# %% tags=["parameters"]
data_dir = "../build/demo/hw3_data"  # an hw3_data/ folder
assets = "../build/demo/models/assets.json"  # asset manifest, or "real"
device = "auto"  # auto, cpu, cuda
smoke = False  # a quick run for tests: fewer bootstrap resamples
figures_dir = "../figures"  # where figures and the summary JSON go

# %%
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from hw3lib.app import (
    confusion_figure,
    counting_figure,
    frequency_figure,
    negation_experiment_figure,
    negation_figure,
    per_class_accuracy_figure,
    prompt_table_figure,
    save,
    selection_figure,
    style_figure,
    top_probabilities_figure,
)
from hw3lib.core import P1Summary, list_images, load_manifest, open_image, resolve_device
from hw3lib.demo import COUNTING_MANIFEST, NEGATION_MANIFEST, UNSTYLED_MANIFEST, DemoModels, DemoWorld, boxes_for
from hw3lib.models import load_clip
from hw3lib.zeroshot import (
    PHOTO,
    REPORT,
    StylePrompts,
    ZeroShotStudy,
    confusion_matrix,
    count_zero_shot,
    ensemble,
    frequency_study,
    negation_benchmark,
    negation_study,
    per_class_accuracy,
    prompt_study,
    style_study,
    template_set,
    top_probabilities,
)

figures = Path(figures_dir)
figures.mkdir(parents=True, exist_ok=True)
device = str(resolve_device(device))
clip = load_clip(load_manifest(assets).clip, device)
p1 = Path(data_dir) / "p1_data"
world = DemoWorld.load(data_dir)  # None on real data: the demo-world sections skip themselves
study = ZeroShotStudy.from_folder(clip, p1 / "val", p1 / "id2label.json", device)
print(f"{len(study.paths)} images, {len(study.class_names)} classes; images encoded once")

# %% [markdown]
# ## The prompt table
# Single prompts (blue) and ensembles (orange): mean of the normalised text embeddings of every
# template. Error bars are 95% percentile-bootstrap intervals over images.

# %%
prompts = list(REPORT) + list(PHOTO) + ["{object}"]
sets = {"report": list(REPORT), "openai7": list(template_set("openai7")), "openai80": list(template_set("openai80"))}
result = prompt_study(study, prompts, sets, n_boot=300 if smoke else 2000)
for r in result.rows:
    print(f"{r.prompt:<45} {r.accuracy * 100:6.2f}%  [{r.ci.low * 100:.1f}, {r.ci.high * 100:.1f}]")
save(prompt_table_figure(result.rows, result.chance), figures / "p1_prompt_table.png")

# %% [markdown]
# ## Is the difference between two prompts real?
# Exact McNemar test on the images where exactly one of the two prompts is right, and a paired
# bootstrap interval of the accuracy difference.

# %%
for t in result.paired_tests:
    d = t.test
    print(f"{t.b!r} vs {t.a!r}: diff {d.difference * 100:+.2f} pts [{d.ci.low * 100:+.1f}, {d.ci.high * 100:+.1f}], "
          f"discordant {d.only_a}/{d.only_b}, McNemar p = {d.p_value:.3g}")

# %% [markdown]
# ## Per-class accuracy and confusions of the best single prompt

# %%
best = result.best_single_prompt
weights = ensemble(study.text_features([best]))
pred = study.predict(weights)
C = len(study.class_names)
save(per_class_accuracy_figure(study.class_names, per_class_accuracy(pred, study.labels, C),
                               title=f"Per-class accuracy: {best!r}"), figures / "p1_per_class_accuracy.png")
save(confusion_figure(confusion_matrix(pred, study.labels, C), study.class_names), figures / "p1_confusion.png")

# %% [markdown]
# ## Top-5 probabilities for three images

# %%
rng = np.random.default_rng(0)
chosen = sorted(rng.choice(len(study.paths), size=3, replace=False).tolist())
top = top_probabilities(study, weights, chosen)
images = [open_image(study.paths[i]) for i in chosen]
save(top_probabilities_figure(images, top, [study.class_names[study.labels[i]] for i in chosen]),
     figures / "p1_top5.png")

# %% [markdown]
# ## Ensembles and greedy selection
# Templates are chosen greedily on the even-indexed images and scored on the odd-indexed ones, so
# the selected ensemble's number is not fitted to the images it is reported on.

# %%
sel = result.selection
print("selected:", sel.chosen)
save(selection_figure(sel), figures / "p1_selection.png")

# %% [markdown]
# ## Does CLIP read "not"?
# If the text tower understood negation, "This is not a photo of {object}" would point away from the
# class, and reading its scores inverted (the class it scores lowest) would be the good classifier.
# Per class: the cosine similarity of the two prompts' text embeddings; per image: whether the two
# prompts pick the same class.

# %%
neg = negation_study(study, REPORT[0], REPORT[1], n_boot=300 if smoke else 2000)
print(f"mean cos(positive, negated) = {neg.cosine_mean:.3f}; same prediction on "
      f"{neg.same_prediction * 100:.1f}% of images")
for k, a in (("positive", neg.positive_accuracy), ("negated", neg.negated_accuracy),
             ("negated, read inverted", neg.negated_inverted_accuracy)):
    print(f"{k:<28} {a.accuracy * 100:6.2f}%  [{a.ci.low * 100:.1f}, {a.ci.high * 100:.1f}]")
for name, c, same in zip(neg.classes, neg.cosine_per_class, neg.same_prediction_per_class, strict=True):
    print(f"  {name:<12} cos {c:.3f}  same prediction {'-' if same is None else f'{same * 100:.0f}%'}")
save(negation_figure(neg), figures / "p1_negation.png")

# %% [markdown]
# ## Prompt accuracy and the pretraining text (demo world)
# The demo CLIP read a known text: every training caption is a scene description inside a framing
# ("a photo of ...", "this is ...", rarer ones) drawn at recorded frequencies (`hw3lib.demo.pretraining_text`).
# Each framing is scored as a prompt beside its share of that text, five framings of OpenAI templates
# that it never read among them; then the report's prompts and OpenAI's 80 templates beside the
# frequency of their words. Real CLIP's pretraining text is not known, so on real assets this skips.

# %%
models = DemoModels.load(assets)  # None for real assets: the one place that tells them apart
text = models.pretraining_text() if models else None
freq = None
if text is None:
    print("skipped: the frequency study needs the demo world's known pretraining text (metrics.json beside "
          "the demo manifest); real CLIP's is not known")
else:
    freq = frequency_study(study, text, list(REPORT), list(template_set("openai80")), n_boot=300 if smoke else 2000)
    print(f"{text.captions} training captions; {len(text.word_counts)} distinct words")
    for r in freq.framings:
        print(f"{r.framing:<36} {r.frequency * 100:6.2f}% of captions  accuracy {r.accuracy.accuracy * 100:5.1f}% "
              f"[{r.accuracy.ci.low * 100:.1f}, {r.accuracy.ci.high * 100:.1f}]")
    for r in freq.templates[:freq.report_prompts]:
        print(f"{r.framing!r}: word frequency {r.word_frequency:.2f}, unseen words {r.unseen_words or '-'}, "
              f"accuracy {r.accuracy.accuracy * 100:.1f}%")
    for what, c in (("framings", freq.framing_correlation), ("templates", freq.template_correlation)):
        print(f"Spearman rho, accuracy vs frequency ({what}): {c.rho:+.3f} (permutation p = {c.p_value:.3g}, n = {c.n})")
    save(frequency_figure(freq, result.chance), figures / "p1_frequency.png")

# %% [markdown]
# ## Prompts by image style (demo world)
# The demo CLIP's pretraining images come in six render styles (photo-like, sketch, blurry, low
# resolution, dark, bright), and a caption's framing goes with its image's look most of the time, as
# alt-text does ("a sketch of ..." under sketches; `hw3lib.demo.styles`). P1's images come in the same
# six styles, equally often per class (`p1_data/styles.json`). Each style's framing is scored as a prompt
# on each style's images; per style, its own framing against "a photo of a {object}" (paired interval,
# McNemar); then every pair of the report's prompts, CLIP's "a photo of a {object}." against the bare
# class name, and the 80-template ensemble against that single prompt. Real data has no styles: skips.

# %%
styles = None
if world is None or not world.p1_styles:
    print("skipped: the style study needs the demo world's P1 styles (p1_data/styles.json)")
else:
    image_styles = [world.p1_styles[p.name] for p in study.paths]
    clips = {"base": clip}
    unstyled_manifest = models.manifest(UNSTYLED_MANIFEST) if models else None
    if unstyled_manifest is not None:  # the CLIP before its style phase: the old design, as an ablation
        clips["old design (no styled images; framings independent of the image)"] = load_clip(
            load_manifest(unstyled_manifest).clip, device)
    styles = [style_study(study.with_clip(c), image_styles, StylePrompts(list(REPORT), PHOTO[0], list(template_set("openai80"))),
                          text, n_boot=300 if smoke else 2000, name=name) for name, c in clips.items()]
    for st in styles:
        print(f"== {st.clip}")
        print(f"{'style':<8} {'images':>6}  " + "  ".join(f"{s:>8}" for s in st.prompt_styles))
        for r in st.rows:
            v = r.matched_vs_photo
            vs = "" if v is None else (f"  own framing vs 'a photo of': {v.difference * 100:+.1f} pts "
                                       f"[{v.ci.low * 100:+.1f}, {v.ci.high * 100:+.1f}], McNemar p = {v.p_value:.3g}")
            print(f"{r.style:<8} {r.images:>6}  " + "  ".join(f"{a * 100:7.1f}%" for a in r.accuracy) + vs)
        d = st.matched_vs_mismatched
        print(f"own style's framing vs the mean of the others, per image: {d.difference * 100:+.1f} pts "
              f"[{d.ci.low * 100:+.1f}, {d.ci.high * 100:+.1f}]")
        for t in [*st.report_pairs, st.bare_vs_photo, st.ensemble_vs_photo]:
            x = t.test
            print(f"  {t.b!r} vs {t.a!r}: {x.accuracy_b * 100:.1f} vs {x.accuracy_a * 100:.1f}%, diff "
                  f"{x.difference * 100:+.1f} [{x.ci.low * 100:+.1f}, {x.ci.high * 100:+.1f}], McNemar p = {x.p_value:.3g}")
    for prompt, by_word in styles[0].word_styles.items():
        print(f"{prompt!r}: " + "; ".join(f"{w!r} came with " + ", ".join(
            f"{s} {v:.0%}" for s, v in zip(styles[0].styles, shares, strict=True) if v >= 0.1) for w, shares in by_word.items()))
    save(style_figure(styles), figures / "p1_styles.png")

# %% [markdown]
# ## Negation learned from counterfactual images (demo world)
# A second CLIP: the demo CLIP fine-tuned (text tower and both projections; the image trunk frozen) on
# counterfactual pairs drawn from the world's boxes - a scene and the same scene with one object's shape
# redrawn as a shape the scene lacks -
# with CoN-CLIP's three choices beside an in-batch contrastive anchor (`hw3lib.zeroshot.counterfactual`,
# `hw3 demo-models`). Both CLIPs, and the base CLIP with negation read by sign (score("no X") :=
# -score("X"), an inference-time bound), on the negation study above, on a NegBench-style multiple-choice
# test over P2 val images (one true statement - an affirmation, a negation of an absent shape, or both -
# among three false ones: a negated present object, an affirmed absent one, both), and on image-to-text
# recall@1. The main prompt table above stays on the base CLIP.

# %%
negation_manifest = models.manifest(NEGATION_MANIFEST) if models else None
experiment = None
if world is None or negation_manifest is None:
    print("skipped: the negation experiment needs the demo world (its boxes.json and the negation-tuned CLIP "
          "that hw3 demo-models writes)")
else:
    tuned = load_clip(load_manifest(negation_manifest).clip, device)
    experiment = negation_benchmark({"base": clip, "negation-tuned": tuned}, study, world, (REPORT[0], REPORT[1]),
                                    n_boot=300 if smoke else 2000, device=device, sign_baseline="base")
    for sc in experiment:
        n = sc.negation
        print(f"{sc.name:<15} negated read inverted {n.negated_inverted_accuracy.accuracy * 100:5.1f}%  "
              f"cos {n.cosine_mean:.3f}  same prediction {n.same_prediction * 100:5.1f}%  "
              f"multiple choice {sc.choice.accuracy.accuracy * 100:5.1f}% "
              f"[{sc.choice.accuracy.ci.low * 100:.1f}, {sc.choice.accuracy.ci.high * 100:.1f}] "
              f"({', '.join(f'{k} {v.accuracy * 100:.0f}%' for k, v in sc.choice.by_type.items())})  "
              f"recall@1 {sc.recall_at_1.accuracy * 100:5.1f}%")
    save(negation_experiment_figure(experiment), figures / "p1_negation_experiment.png")

# %% [markdown]
# ## Can the CLIP count? (demo world: CountBench-style)
# CLIP is known not to count (Paiss et al. 2023 measure ViT-B/32 at 31.7% on CountBench). Here: which of
# "a picture of one / two / three shapes" fits each P2 val image, whose object count boxes.json knows; every
# CLIP the demo models hold, the count-aware one among them (fine-tuned as Paiss et al. teach CLIP to count,
# on counterfactual counts and counterfactual images; `hw3lib.pretraining.count_tuning`; its training states
# counts in other words than this prompt). On real data without known counts this skips.

# %%
counting = None
if world is None or not world.objects("p2_data"):
    print("skipped: the count test needs images whose object counts are known (the demo world's boxes.json)")
else:
    val_images = list_images(Path(data_dir) / "p2_data" / "images" / "val")
    val_counts = [len(boxes_for(p.name, world.objects("p2_data"), "val")) for p in val_images]
    counting_manifest = models.manifest(COUNTING_MANIFEST) if models else None
    count_clips = ({"base": clip} | ({"negation-tuned": tuned} if experiment is not None else {})
                   | ({"count-aware": load_clip(load_manifest(counting_manifest).clip, device)} if counting_manifest else {}))
    counting = [count_zero_shot(c, val_images, val_counts, name, n_boot=300 if smoke else 2000, device=device)
                for name, c in count_clips.items()]
    for r in counting:
        print(f"{r.clip:<15} count accuracy {r.accuracy.accuracy * 100:5.1f}% (chance {r.chance * 100:.1f}%)  "
              + "  ".join(f"{n} object(s) {v * 100:.0f}%" for n, v in r.by_count.items()))
    save(counting_figure(counting), figures / "p1_counting.png")

# %%
brief = replace(result, selection=replace(sel, per_template_accuracy=None))  # the summary leaves it out
summary = P1Summary(brief, neg, freq, experiment, styles, counting)
summary.save(figures / "p1_summary.json")
plt.close("all")
