"""The `hw3` command line (also `python -m hw3lib`).

Each subcommand is a thin wrapper: parse arguments, call the library, print a short summary. User
errors (`HW3Error`) print as one line on stderr with exit status 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from pathlib import Path

from .io import HW3Error


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# subcommands


def cmd_demo_data(args) -> int:
    from .data import read_caption_file, read_p1_folder
    from .demo import write_demo_world

    root = write_demo_world(args.out_dir, seed=args.seed, size=args.size)
    p1 = read_p1_folder(root / "p1_data" / "val", root / "p1_data" / "id2label.json")
    tr = read_caption_file(root / "p2_data" / "train.json", root / "p2_data" / "images" / "train")
    va = read_caption_file(root / "p2_data" / "val.json", root / "p2_data" / "images" / "val")
    print(f"wrote {root}: p1 {len(p1.samples)} images / {len(p1.id2label)} classes, "
          f"p2 train {len(tr)} images / {len(tr.pairs())} captions, val {len(va)} / {len(va.pairs())}")
    return 0


def cmd_demo_models(args) -> int:
    from .pretrain import build_demo_models

    manifest = build_demo_models(args.data_dir, args.out_dir, size=args.size, seed=args.seed, force=args.force)
    print(f"assets manifest: {manifest}")
    return 0


def _device(name: str) -> str:
    from .train import resolve_device

    return str(resolve_device(name))


def _manifest(args, decoder=None):
    from .assets import check_files, load_manifest

    m = load_manifest(args.assets)
    if decoder is not None:
        m.decoder.weights = str(decoder)
    if getattr(args, "model", None):
        m.clip.model, m.clip.config = args.model, None
    if getattr(args, "pretrained", None):
        m.clip.pretrained = args.pretrained
    check_files(m)
    return m


def cmd_zeroshot(args) -> int:
    from .assets import load_clip
    from .templates import PHOTO, check_template, template_set
    from .zeroshot import ZeroShotStudy, accuracy, bootstrap_ci, write_predictions_csv

    templates = [check_template(t) for t in args.template] if args.template else []
    if args.templates:
        templates += list(template_set(args.templates))
    templates = templates or list(PHOTO)
    device = _device(args.device)
    m = _manifest(args)
    clip = load_clip(m.clip, device)
    study = ZeroShotStudy.from_folder(clip, args.image_dir, args.id2label, device, args.batch_size,
                                      skip_bad=args.skip_bad, labelled=None)
    pred = study.predict(_weights(study, templates))
    write_predictions_csv(args.out_csv, study.paths, [study.class_ids[i] for i in pred])
    msg = f"wrote {args.out_csv}: {len(pred)} images, {len(templates)} template(s)"
    if study.labels is not None:
        correct = pred == study.labels
        lo, hi = bootstrap_ci(correct)
        msg += f"; accuracy {accuracy(pred, study.labels):.4f} (95% CI {lo:.4f}-{hi:.4f})"
    print(msg)
    return 0


def _weights(study, templates):
    from .zeroshot import ensemble

    return ensemble(study.text_features(templates))


def cmd_train(args) -> int:
    from .pipeline import train_run

    train_run(args.config, args.assets, args.data, args.out, args.overrides, reuse=False)
    return 0


def cmd_caption(args) -> int:
    import json

    from .io import atomic_write_text, list_images
    from .pipeline import caption_folder, load_run, manifest_for

    m = manifest_for(args.assets, decoder=args.decoder_weights)
    device = _device(args.device)
    model = load_run(args.checkpoint, m, device)
    paths = list_images(args.image_dir)
    preds = caption_folder(model, m, paths, args.beams, args.max_len, args.batch_size, args.length_penalty, device)
    atomic_write_text(args.out_json, json.dumps(preds, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out_json}: {len(preds)} captions")
    return 0


def cmd_evaluate(args) -> int:
    from .assets import load_clip
    from .data import read_caption_file, read_predictions
    from .io import atomic_write_json
    from .metrics import evaluate

    preds = read_predictions(args.pred_json)
    cs = read_caption_file(args.annotations, args.images)
    from .data import check_prediction_keys

    check_prediction_keys(preds, cs.references().keys(), args.pred_json)
    clip = None
    if not args.no_clip:
        m = _manifest(args)
        clip = load_clip(m.clip, _device(args.device))
    result = evaluate(preds, cs, clip, args.tokenizer, "A photo depicts " if args.photo_prefix else "",
                      _device(args.device))
    print(f"CIDEr: {result['CIDEr']}")
    if clip is not None:
        print(f"CLIPScore: {result['CLIPScore']}")
        print(f"RefCLIPScore: {result['RefCLIPScore']}")
    out = args.per_image or args.pred_json.with_suffix(".scores.json")
    atomic_write_json(out, result)
    return 0


def cmd_attention(args) -> int:
    from .assets import encoder_transform, load_tokenizer
    from .attention import capture, display_maps, html_viewer, method_maps
    from .io import atomic_write_text, list_images, open_image
    from .pipeline import load_run, manifest_for
    from .plots import save, token_maps_figure

    m = manifest_for(args.assets)
    device = _device(args.device)
    model = load_run(args.checkpoint, m, device)
    paths = []
    for p in args.images:
        paths += list_images(p) if p.is_dir() else [p]
    layers = "last" if args.layers == "last" else "all" if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    heads = args.heads if args.heads in ("mean", "max") else [int(x) for x in args.heads.split(",")]
    caps = capture(model, load_tokenizer(m), encoder_transform(model.encoder), paths, args.beams, args.max_len, device)
    items = []
    for ca in caps:
        maps = method_maps(model, ca, args.method, layers, heads)
        items.append((ca, maps))
        fig = token_maps_figure(open_image(ca.path), ca.caption, ca.token_texts, display_maps(ca, maps),
                                title=f"{ca.path.name} ({args.method}, layers={args.layers}, heads={args.heads})")
        save(fig, args.out / f"{ca.path.stem}_attention.png")
        print(f"{ca.path.name}: {ca.caption}")
    if args.html:
        atomic_write_text(args.html, html_viewer(items))
        print(f"wrote {args.html}")
    return 0


def cmd_export_decoder(args) -> int:
    from .decoder import export_decoder_from_transformers

    n = export_decoder_from_transformers(args.gpt2_dir, args.out)
    print(f"wrote {args.out} ({n} tensors, course decoder format)")
    return 0


# ----------------------------------------------------------------------------------------------
# parser


def _assets_arg(s):
    s.add_argument("--assets", default=os.environ.get("HW3_ASSETS", "real"),
                   help="asset manifest (assets.json) or 'real' (default: $HW3_ASSETS or 'real')")


def _device_arg(s):
    s.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hw3", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo-data", help="write the miniature demo hw3_data/ (deterministic)")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", choices=["small", "full"], default="full")
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("demo-models", help="pretrain the demo world's tiny BPE, CLIP, ViT and GPT-2")
    s.add_argument("data_dir", type=Path, help="a demo hw3_data/ folder (from hw3 demo-data)")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--size", choices=["small", "full"], default="full")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="retrain even when cached outputs match")
    s.set_defaults(func=cmd_demo_models)

    s = sub.add_parser("zeroshot", help="P1: CLIP zero-shot classification -> filename,label CSV")
    s.add_argument("image_dir", type=Path)
    s.add_argument("id2label", type=Path)
    s.add_argument("out_csv", type=Path)
    _assets_arg(s)
    s.add_argument("--template", action="append", default=[], metavar="T",
                   help="a prompt with {object}; repeat for an ensemble")
    s.add_argument("--templates", metavar="NAME", help="built-in set: report, photo, openai80, openai7")
    s.add_argument("--model", help="open_clip model name (overrides the manifest)")
    s.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint (overrides the manifest)")
    s.add_argument("--batch-size", type=int, default=64)
    _device_arg(s)
    s.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    s.set_defaults(func=cmd_zeroshot)

    s = sub.add_parser("train", help="P2: train the captioner (extra --key=value settings override CONFIG)")
    s.add_argument("config", type=Path, help="TOML config with [captioner] and [train] tables")
    _assets_arg(s)
    s.add_argument("--data", type=Path, required=True, help="the p2_data/ folder")
    s.add_argument("--out", type=Path, required=True, help="run folder (resumed when it holds a run)")
    s.set_defaults(func=cmd_train, takes_overrides=True)

    s = sub.add_parser("caption", help="P2: caption every image -> {file_name_without_extension: caption}")
    s.add_argument("image_dir", type=Path)
    s.add_argument("out_json", type=Path)
    s.add_argument("decoder_weights", type=Path, help="the course's decoder weights file")
    s.add_argument("--checkpoint", type=Path, help="run folder or checkpoint file (default: untrained model)")
    _assets_arg(s)
    s.add_argument("--beams", type=int, default=1)
    s.add_argument("--max-len", type=int, default=60)
    s.add_argument("--length-penalty", type=float, default=1.0)
    s.add_argument("--batch-size", type=int, default=16)
    _device_arg(s)
    s.set_defaults(func=cmd_caption)

    s = sub.add_parser("evaluate", help="P2: CIDEr-D and CLIPScore of a prediction file, like the course's evaluator")
    s.add_argument("pred_json", type=Path)
    s.add_argument("--images", type=Path, required=True, help="the images the annotations name")
    s.add_argument("--annotations", type=Path, required=True, help="val.json (COCO-captions shape)")
    _assets_arg(s)
    s.add_argument("--tokenizer", choices=["ptb", "python"], default="ptb",
                   help="ptb: Stanford PTB tokenizer (Java), as the course; python: Java-free equivalent")
    s.add_argument("--photo-prefix", action="store_true", help='prefix captions with "A photo depicts" for CLIPScore')
    s.add_argument("--no-clip", action="store_true", help="CIDEr only")
    s.add_argument("--per-image", type=Path, help="where per-image scores go (default PRED.scores.json)")
    _device_arg(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("attention", help="P3: per-token attention maps as figures and a standalone HTML viewer")
    s.add_argument("images", type=Path, nargs="+", help="image files or folders")
    s.add_argument("--checkpoint", type=Path, help="run folder or checkpoint file (default: untrained model)")
    _assets_arg(s)
    s.add_argument("--out", type=Path, required=True, help="folder for the per-image figures")
    s.add_argument("--html", type=Path, help="also write a standalone HTML viewer here")
    s.add_argument("--method", choices=["raw", "rollout", "relevance"], default="raw")
    s.add_argument("--layers", default="last", help="last, all, or comma-separated layer indices")
    s.add_argument("--heads", default="mean", help="mean, max, or comma-separated head indices")
    s.add_argument("--beams", type=int, default=1)
    s.add_argument("--max-len", type=int, default=60)
    _device_arg(s)
    s.set_defaults(func=cmd_attention)

    s = sub.add_parser("export-decoder", help="write the course decoder file from a transformers GPT-2 folder")
    s.add_argument("gpt2_dir", type=Path, help="folder with config.json + model.safetensors (GPT2LMHeadModel)")
    s.add_argument("out", type=Path, help="output decoder weights file (e.g. decoder_model.bin)")
    s.set_defaults(func=cmd_export_decoder)
    return p


def _parse_overrides(extra: list[str]) -> dict[str, str]:
    """`--key=value` / `--key value` pairs (dashes in keys become underscores)."""
    out, i = {}, 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--") or item == "--":
            raise HW3Error(f"unexpected argument {item!r} (settings are --key=value)")
        if "=" in item:
            key, value = item[2:].split("=", 1)
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            key, value = item[2:], extra[i + 1]
            i += 1
        else:
            raise HW3Error(f"setting {item} has no value (use {item}=VALUE)")
        out[key.replace("-", "_")] = value
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.overrides = _parse_overrides(extra)
    except HW3Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warnings.showwarning = _warn_one_line
    try:
        return args.func(args) or 0
    except HW3Error as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
