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
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HW3Error(f"device {name!r} asked for, but no CUDA GPU is available")
    return name


def _manifest(args):
    from .assets import check_files, load_manifest

    m = load_manifest(args.assets)
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

    s = sub.add_parser("export-decoder", help="write the course decoder file from a transformers GPT-2 folder")
    s.add_argument("gpt2_dir", type=Path, help="folder with config.json + model.safetensors (GPT2LMHeadModel)")
    s.add_argument("out", type=Path, help="output decoder weights file (e.g. decoder_model.bin)")
    s.set_defaults(func=cmd_export_decoder)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
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
