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
# # P3 - attention of the captioner, token by token
#
# For each P3 test image: the caption and one cross-attention map per generated word (the end token
# included), as in the report's Problem 3; the top-1 and last-1 val images by CLIPScore with their
# maps; an interactive slider (and a standalone HTML viewer); and - new here - a score of whether the
# maps find the named objects, on the demo world whose object boxes are known.

# %% tags=["parameters"]
data_dir = "../build/demo/hw3_data"  # an hw3_data/ folder
assets = "../build/demo/models/assets.json"  # asset manifest, or "real"
checkpoint = "../build/runs/demo/shown"  # a trained run (from the P2 notebook or `hw3 train`): the one the report shows
checkpoint_assets = "../build/demo/models/assets_counting.json"  # the manifest the run trained with (None: assets)
device = "auto"  # auto, cpu, cuda
smoke = False  # a quick run for tests: fewer val images
figures_dir = "../figures"  # where figures, the HTML viewer and the summary JSON go
layers = "last"  # "last", "all", or a list of layer indices
heads = "mean"  # "mean", "max", or a list of head indices
localisation_images = 30  # val images scored for localisation (demo world only)
no_repeat_ngram_size = 0  # decoding: ban repeated n-grams (as P2 captions; 0 turns it off)
repetition_penalty = 1.0  # decoding: the repetition penalty of transformers (1 turns it off)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from hw3lib.app import (
    layer_head_figure,
    localisation_figure,
    p3_section,
    pointing_by_shape_figure,
    save,
    token_maps_figure,
)
from hw3lib.attention import (
    METHODS,
    AttentionExplorer,
    capture,
    display_maps,
    localisation,
    method_maps,
    save_viewer,
)
from hw3lib.captioning import clipscore_extremes, load_run, manifest_for
from hw3lib.core import (
    Extreme,
    P3Summary,
    list_images,
    open_image,
    resolve_device,
)
from hw3lib.demo import DemoWorld
from hw3lib.models import Controls, encoder_transform, load_tokenizer

figures = Path(figures_dir)
figures.mkdir(parents=True, exist_ok=True)
device = str(resolve_device(device))
m = manifest_for(assets)  # its CLIP scores captions (CLIPScore), as in P2
model = load_run(checkpoint, manifest_for(checkpoint_assets) if checkpoint_assets else m, device)
tok = load_tokenizer(m)
transform = encoder_transform(model.encoder)
data = Path(data_dir)
world = DemoWorld.load(data)  # None on real data: no objects to point at
controls = Controls(no_repeat_ngram_size, repetition_penalty)

# %% [markdown]
# ## The P3 test images: caption and one map per token (last layer, heads averaged)

# %%
p3 = capture(model, tok, transform, list_images(data / "p3_data" / "images"), device=device, controls=controls)
for ca in p3:
    maps = method_maps(model, ca, "raw", layers, heads)
    save(token_maps_figure(open_image(ca.path), ca.caption, ca.token_texts, display_maps(ca, maps)),
         figures / f"p3_{ca.path.stem}.png")
    print(f"{ca.path.name}: {ca.caption}")

# %% [markdown]
# ## The attention explorer: choose the image, the method, the layer and the head; step through the
# tokens with the slider or play. The same maps (every method) go into a standalone HTML viewer.

# %%
AttentionExplorer(model, p3)

# %%
save_viewer(figures / "p3_viewer.html", [(ca, {k: method_maps(model, ca, k, layers, heads) for k in METHODS}) for ca in p3])

# %% [markdown]
# ## Top-1 and last-1 val images by CLIPScore

# %%
p2 = data / "p2_data"
ext = clipscore_extremes(model, m, p2, limit=8 if smoke else None, device=device, controls=controls)
preds, scores, by_key = ext.predictions, ext.clipscores, ext.paths
extremes = {"top-1": ext.top, "last-1": ext.last}
for label, key in extremes.items():
    ca = capture(model, tok, transform, [by_key[key]], device=device, controls=controls)[0]
    maps = method_maps(model, ca, "raw", layers, heads)
    title = f"{label} by CLIPScore: {by_key[key].name}, CLIPScore = {scores[key]:.3f}"
    save(token_maps_figure(open_image(ca.path), ca.caption, ca.token_texts, display_maps(ca, maps), title=title),
         figures / f"p3_{label}.png")
    print(title, "-", ca.caption)

# %% [markdown]
# ## Do the maps find the named object? (demo world: pointing game and deletion)
# For every shape noun in a caption, the pointing game asks whether the map's most attended patch is one
# that an object of that shape (and colour, where the caption gives one) covers (`hw3lib/core/patches.py`,
# the rule the P2 learning curves use too).
# Deletion blanks the most-attended patches and tracks the token's probability. Random maps give
# the baseline; intervals resample images, and each method is compared with random maps on the same
# nouns (paired bootstrap). Only nouns that name an object of the image are scored.

# %%
loc = None
if world is not None:
    n = 24 if smoke else localisation_images
    caps = capture(model, tok, transform, list_images(p2 / "images" / "val")[:n], device=device, controls=controls)
    loc = localisation(model, caps, world, deletion=not smoke, n_boot=300 if smoke else 2000)
    print(f"{loc.nouns} object nouns in {loc.images} captions")
    display(Markdown("\n".join(p3_section(P3Summary({}, {}, loc)))))
    if loc.nouns:
        save(localisation_figure(loc), figures / "p3_localisation.png")
        save(pointing_by_shape_figure(loc), figures / "p3_pointing_by_shape.png")
        save(layer_head_figure(loc.pointing_per_layer_head), figures / "p3_layer_head.png")
else:
    print("real data: localisation is scored on the demo world only (its objects are known)")
summary = P3Summary({ca.path.name: ca.caption for ca in p3},
                    {k: Extreme(by_key[v].name, scores[v], preds[v]) for k, v in extremes.items()},
                    loc, layers, heads)
summary.save(figures / "p3_summary.json")
plt.close("all")
