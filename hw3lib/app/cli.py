"""The `hw3` command line (also `python -m hw3lib`).

Each subcommand is a thin wrapper: parse arguments, check the inputs it reads (before any model file),
call the library, print a short summary. User errors (`HW3Error`) print as one line on stderr with
exit status 2; `--debug` (before or after the subcommand) shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

from ..core.errors import HW3Error, error_line


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# subcommands


def cmd_demo_data(args) -> int:
    from ..core.data import read_caption_file, read_p1_folder
    from ..demo.world import write_demo_world

    root = write_demo_world(args.out_dir, seed=args.seed, size=args.size, caption_order=args.caption_order)
    p1 = read_p1_folder(root / "p1_data" / "val", root / "p1_data" / "id2label.json")
    tr = read_caption_file(root / "p2_data" / "train.json", root / "p2_data" / "images" / "train")
    va = read_caption_file(root / "p2_data" / "val.json", root / "p2_data" / "images" / "val")
    print(f"wrote {root}: p1 {len(p1.samples)} images / {len(p1.id2label)} classes, "
          f"p2 train {len(tr)} images / {len(tr.pairs())} captions, val {len(va)} / {len(va.pairs())}")
    return 0


def cmd_demo_models(args) -> int:
    from ..pretraining.demo_models import build_demo_models

    manifest = build_demo_models(args.data_dir, args.out_dir, size=args.size, seed=args.seed, force=args.force)
    print(f"assets manifest: {manifest}")
    return 0


def _device(name: str) -> str:
    from ..core.device import resolve_device

    return str(resolve_device(name))


def cmd_zeroshot(args) -> int:
    import numpy as np

    from ..captioning.runs import manifest_for
    from ..core.data import read_p1_folder
    from ..core.files import require_dir, require_file
    from ..core.images import check_images
    from ..models.loading import load_clip
    from ..zeroshot.classify import ZeroShotStudy, accuracy, bootstrap_ci, write_predictions_csv
    from ..zeroshot.templates import PHOTO, check_template, template_set

    templates = [check_template(t) for t in args.template] if args.template else []
    if args.templates:
        templates += list(template_set(args.templates))
    templates = templates or list(PHOTO)
    require_dir(args.image_dir, "image folder")
    require_file(args.id2label, "id2label file")
    ds = read_p1_folder(args.image_dir, args.id2label, labelled=None)
    checked = check_images([s.path for s in ds.samples], skip_bad=args.skip_bad)  # every header, before any model
    m = manifest_for(args.assets, parts=("clip",), clip_model=args.model, clip_pretrained=args.pretrained)
    device = _device(args.device)
    clip = load_clip(m.clip, device)
    study = ZeroShotStudy.from_dataset(clip, ds, device, args.batch_size, checked=checked)
    pred = study.predict(_weights(study, templates))
    write_predictions_csv(args.out_csv, study.paths, [study.class_ids[i] for i in pred])
    msg = f"wrote {args.out_csv}: {len(pred)} images, {len(templates)} template(s)"
    known = {s.path: s.class_id for s in ds.samples if s.class_id is not None}
    index = {cid: i for i, cid in enumerate(study.class_ids)}
    have = [i for i, p in enumerate(study.paths) if p in known]  # images whose names carry a label
    if have:
        labels = np.array([index[known[study.paths[i]]] for i in have])
        correct = pred[have] == labels
        lo, hi = bootstrap_ci(correct)
        msg += f"; accuracy {accuracy(pred[have], labels):.4f} (95% CI {lo:.4f}-{hi:.4f})"
        if len(have) < len(pred):
            msg += f" over the {len(have)} of {len(pred)} images named {{class_id}}_{{image_id}}"
    print(msg)
    return 0


def _weights(study, templates):
    from ..zeroshot.classify import ensemble

    return ensemble(study.text_features(templates))


def cmd_train(args) -> int:
    from ..captioning.runs import train_run

    if args.print_config:
        from ..core.device import resolve_device
        from ..core.precision import choose_precision
        from ..training.config import config_toml, load_config

        cap, tr = load_config(args.config, args.overrides)
        print(config_toml(cap, tr), end="")
        print(f"# amp = {tr.amp!r} on this machine: {choose_precision(tr.amp, resolve_device(tr.device)).describe()}")
        return 0
    if args.plan or args.plan_gpu:
        return _plan(args)
    missing = [opt for opt, value in (("--data", args.data), ("--out", args.out)) if value is None]
    if missing:
        raise HW3Error(f"hw3 train: {' and '.join(missing)} required (except with --print-config or --plan)")
    from ..captioning.runs import load_run, manifest_for, write_val_predictions
    from ..core.data import read_caption_file
    from ..models.decoding import Decoding
    from ..training.config import load_config

    train_run(args.config, args.assets, args.data, args.out, args.overrides, reuse=False, force_new=args.force_new)
    tr = load_config(args.config, args.overrides)[1]
    m, device = manifest_for(args.assets), _device(tr.device)
    val = read_caption_file(args.data / "val.json", args.data / "images" / "val")
    write_val_predictions(load_run(args.out, m, device), args.out, m, [im.path for im in val.images], device,
                          Decoding(max_len=tr.max_caption_tokens, controls=tr.controls))
    print(f"wrote {args.out / 'val_predictions.json'}: greedy captions of the val split by the best checkpoint")
    return 0


def _plan(args) -> int:
    """hw3 train --plan / --plan-gpu: the precision and the memory plan, and whether it fits."""
    import torch

    from ..captioning.runs import manifest_for, plan_memory
    from ..core.device import resolve_device
    from ..core.precision import choose_precision, gpu_precision
    from ..models.memory import GiB
    from ..training.config import load_config

    cap, tr = load_config(args.config, args.overrides)
    m = manifest_for(args.assets, parts=("decoder",))  # the encoder's architecture is all the plan needs
    if args.plan_gpu:
        gib, cc = args.plan_gpu
        device, gpu_bytes = torch.device("cuda"), int(gib * GiB)
        precision = gpu_precision(tr.amp, cc, f"a {gib:g} GiB GPU of compute capability {cc[0]}.{cc[1]}")
    else:
        device, gpu_bytes = resolve_device(tr.device), None
        precision = choose_precision(tr.amp, device)
    plan_memory(m, cap, tr, precision, device, gpu_bytes)
    print("fits" if device.type == "cuda" else f"no GPU here ({device.type}): nothing to check it against "
          "(--plan-gpu GIB[@CC] plans for a card you do not have)")
    return 0


LINE_BREAKING = re.compile("[\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # splits a line of '-' output


def cmd_caption(args) -> int:
    import json

    from ..core.files import atomic_write_text, require_file
    from ..core.images import check_images, image_paths, unique_stems

    paths = unique_stems(image_paths(args.images))
    if str(args.out_json) != "-":
        for p in paths:
            if not p.stem.isascii() and not _utf8(p.stem):
                raise HW3Error(f"{p}: file name is not valid UTF-8, so it cannot be a key of {args.out_json} "
                               "(rename the file, or print with OUT_JSON -)")
    else:
        for p in paths:  # one NAME<TAB>CAPTION line per image: a tab or line break in a name would split it
            if LINE_BREAKING.search(p.stem):
                raise HW3Error(f"{ascii(str(p))}: a tab or line break in the file name would break the "
                               "NAME<TAB>CAPTION lines of OUT_JSON - (rename the file, or write a JSON file)")
    check_images(paths)  # every header, before any model
    require_file(args.decoder_weights, "decoder weights file")
    controls = _controls(args)
    if args.checkpoint is None and not args.untrained:
        raise HW3Error("--checkpoint: no trained captioner given (a run folder or checkpoint file from hw3 train); "
                       "pass --untrained to caption with the untrained model")
    if args.checkpoint is not None and not args.checkpoint.exists():
        raise HW3Error(f"--checkpoint {args.checkpoint}: no such run folder or checkpoint file")
    from ..captioning.runs import caption_folder, load_run, manifest_for
    from ..core.precision import choose_precision
    from ..models.decoding import Decoding

    m = manifest_for(args.assets, decoder=args.decoder_weights, parts=("encoder", "decoder", "tokenizer"))
    device = _device(args.device)
    precision = choose_precision("auto", device)  # half on a GPU (bf16 from compute capability 8.0, else fp16)
    model = load_run(args.checkpoint, m, device, precision)
    decoding = Decoding(args.beams, args.max_len, args.length_penalty, controls, args.batch_size,
                        None if args.quantize == "none" else args.quantize, packed=not args.no_packed)
    preds = caption_folder(model, m, paths, decoding, device, precision=precision)
    if str(args.out_json) == "-":
        sys.stdout.write("".join(f"{name}\t{LINE_BREAKING.sub(' ', caption)}\n" for name, caption in preds.items()))
        return 0
    atomic_write_text(args.out_json, json.dumps(preds, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out_json}: {len(preds)} captions")
    return 0


def cmd_evaluate(args) -> int:
    from ..core.data import read_caption_file, read_predictions
    from ..core.files import atomic_write_json
    from ..metrics.captions import evaluate
    from ..models.loading import load_clip

    preds = read_predictions(args.pred_json)
    cs = read_caption_file(args.annotations, args.images)
    from ..core.data import check_prediction_keys

    check_prediction_keys(preds, cs.references().keys(), args.pred_json)
    from ..metrics.chair import chair, instance_categories

    instances = instance_categories(args.instances) if args.instances else None
    clip = None
    if not args.no_clip:
        from ..captioning.runs import manifest_for
        from ..core.images import check_images

        check_images([im.path for im in cs.images if im.path is not None])  # every header, before the model

        clip = load_clip(manifest_for(args.assets, parts=("clip",)).clip, _device(args.device))
    result = evaluate(preds, cs, clip, args.tokenizer, "A photo depicts " if args.photo_prefix else "",
                      _device(args.device))
    print(f"CIDEr: {result.CIDEr}")
    if clip is not None:
        print(f"CLIPScore: {result.CLIPScore}")
        print(f"RefCLIPScore: {result.RefCLIPScore}")
    from ..demo.world import DemoWorld

    if DemoWorld.load(args.annotations.parent.parent) is not None:  # shapes, not COCO objects ("orange" a colour)
        print("CHAIR: not computed on the demo world (its objects are shapes; the P2 table's object metrics score them)")
        atomic_write_json(_per_image_path(args), result.to_json())
        return 0
    ch = chair(preds, cs.references(), instances)
    if ch.chair_s is None or ch.chair_i is None:
        print("CHAIR: the captions name none of the 80 COCO object categories")
    else:
        print(f"CHAIR-i: {ch.chair_i:.4f}  CHAIR-s: {ch.chair_s:.4f}  object recall: "
              f"{'-' if ch.recall is None else f'{ch.recall:.4f}'}")
    out = _per_image_path(args)
    atomic_write_json(out, result.to_json(ch))
    return 0


def cmd_attention(args) -> int:
    from ..attention.maps import capture, check_layers_heads, display_maps, method_maps
    from ..attention.viewer import html_viewer
    from ..captioning.runs import load_run, manifest_for
    from ..core.files import atomic_write_text, output_lock
    from ..core.images import check_images, image_paths, open_image, unique_stems
    from ..models.loading import encoder_transform, load_tokenizer
    from .plots import save, token_maps_figure

    paths = check_images(unique_stems(image_paths(args.images)))  # every header, before any model
    controls = _controls(args)
    layers = _index_list("--layers", args.layers, ("last", "all"))
    heads = _index_list("--heads", args.heads, ("mean", "max"))
    m = manifest_for(args.assets, parts=("encoder", "decoder", "tokenizer"))
    device = _device(args.device)
    model = load_run(args.checkpoint, m, device)
    check_layers_heads(layers, heads, model.decoder.config.n_layer, model.decoder.config.n_head)
    caps = capture(model, load_tokenizer(m), encoder_transform(model.encoder), paths, args.beams, args.max_len, device,
                   controls)
    items = []
    with output_lock(args.out, "hw3 attention"):  # each figure is written atomically; one writer per folder
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
    from ..models.decoder_file import export_decoder_from_transformers

    n = export_decoder_from_transformers(args.gpt2_dir, args.out)
    print(f"wrote {args.out} ({n} tensors, course decoder format)")
    return 0


def _per_image_path(args) -> Path:
    """Where `hw3 evaluate` writes per-image scores: --per-image, or PRED.scores.json beside PRED."""
    return args.per_image or args.pred_json.with_suffix(".scores.json")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name (surrogate escapes)
        return False
    return True


def _index_list(option: str, text: str, words: tuple[str, ...]):
    """'last' / 'mean' style words, or comma-separated integers."""
    if text in words:
        return text
    try:
        return [int(x) for x in text.split(",")]
    except ValueError as e:
        raise HW3Error(f"{option}: expected {' or '.join(words)} or comma-separated integers, got {text!r}") from e


# ----------------------------------------------------------------------------------------------
# what each command reads and writes: outputs are checked against inputs before any work


def _manifest_inputs(assets) -> list:
    from ..core.manifest import manifest_inputs

    return manifest_inputs(assets)


def _run_files(out) -> list:
    """Every file `hw3 train` writes in its run folder (an input there would be overwritten)."""
    from ..training.runfolder import RUN_FILES

    return [] if out is None else [Path(out) / name for name in RUN_FILES]


def _cache_dir(a):
    """The feature cache folder the run will write (its config's cache_dir, or the default)."""
    if a.out is None or a.print_config or a.plan or a.plan_gpu:
        return None
    from ..training.config import load_config

    cache_dir = load_config(a.config, a.overrides)[1].cache_dir
    return Path(cache_dir) if cache_dir else Path(a.out).parent / "feature-cache"


def _attention_files(a) -> list:
    """The per-image figures `hw3 attention` writes into --out."""
    from ..core.images import image_paths

    return [Path(a.out) / f"{p.stem}_attention.png" for p in image_paths(a.images)]


PATHS = {  # command -> args -> (inputs, {argument: output file(s)}, {argument: output folder})
    "demo-data": lambda a: ([], {}, {"OUT_DIR": a.out_dir}),
    "demo-models": lambda a: ([a.data_dir], {}, {"OUT_DIR": a.out_dir}),
    "zeroshot": lambda a: ([a.image_dir, a.id2label, a.pretrained, *_manifest_inputs(a.assets)],
                           {"OUT_CSV": a.out_csv}, {}),
    "train": lambda a: ([a.config, a.data, *_manifest_inputs(a.assets)], {"--out": _run_files(a.out)},
                        {"--out": a.out, "cache_dir": _cache_dir(a)}),
    "caption": lambda a: ([*a.images, a.decoder_weights, a.checkpoint, *_manifest_inputs(a.assets)],
                          {"OUT_JSON": a.out_json}, {}),
    "evaluate": lambda a: ([a.pred_json, a.images, a.annotations, a.instances, *_manifest_inputs(a.assets)],
                           {"--per-image": _per_image_path(a)}, {}),
    "attention": lambda a: ([*a.images, a.checkpoint, *_manifest_inputs(a.assets)],
                            {"--html": a.html, "--out": _attention_files(a)}, {"--out": a.out}),
    "export-decoder": lambda a: ([a.gpt2_dir], {"OUT": a.out}, {}),
}


# ----------------------------------------------------------------------------------------------
# parser


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other error: exit status 2 and one `error:` line. `more_help`
    (a function) adds text to the description when help is shown, so building the parser stays cheap."""

    more_help = None
    _args: list[str] = []  # the arguments this parser was last given (for `error`)

    def parse_known_args(self, args=None, namespace=None):
        self._args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def format_help(self):
        if self.more_help is not None:
            self.description, self.more_help = f"{self.description}\n\n{self.more_help()}", None
        return super().format_help()

    def error(self, message):
        dashed = self._dashed_path()
        if dashed is not None:  # argparse took a path for an option and says something else went wrong
            message = (f"{dashed} was read as an option; a path that begins with '-' is written "
                       f"./{dashed}")
        print(f"error: {self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)

    def _dashed_path(self) -> str | None:
        """The first argument that begins with one '-' and is none of this parser's options (nor a number),
        e.g. a folder named -data: argparse reads it as an unknown option."""
        for a in self._args:
            if a.startswith("-") and not a.startswith("--") and len(a) > 2 and a[:2] not in self._option_string_actions:
                try:
                    float(a)
                except ValueError:
                    return a
        return None


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from e
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def _device_name(text: str) -> str:
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (auto, cpu, cuda, cuda:N, mps)")
    return text


def _gpu_spec(text: str) -> tuple[float, tuple[int, int]]:
    """'11' or '11@7.5': GPU memory in GiB and compute capability (default 8.0)."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)(?:@(\d+)\.(\d))?", text)
    if not m or float(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected GIB or GIB@MAJOR.MINOR (e.g. 11@7.5), got {text!r}")
    return float(m[1]), (int(m[2] or 8), int(m[3] or 0))


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every option's help (not for flags and unset options); descriptions and
    examples keep their line breaks."""

    def _get_help_string(self, action):
        if action.default in (None, False) or isinstance(action, argparse._VersionAction):
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hw3lib")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown"


def _command(sub, name: str, summary: str, description: str, examples: list[str], **kw) -> argparse.ArgumentParser:
    s = sub.add_parser(name, help=summary, description=f"{summary}.\n\n{description}", formatter_class=_Help,
                       epilog="example" + ("s" if len(examples) > 1 else "") + ":\n" +
                       "\n".join(f"  {e}" for e in examples), **kw)
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error (also accepted before the subcommand)")
    return s


def _assets_arg(s):
    s.add_argument("--assets", default=os.environ.get("HW3_ASSETS", "real"),
                   help="asset manifest (assets.json), or 'real' for the built-in one; $HW3_ASSETS sets the default")


def _decoding_args(s):
    s.add_argument("--no-repeat-ngram-size", type=int, default=0, metavar="N",
                   help="ban any token that would repeat an N-gram of the caption (transformers' semantics; 0 = off)")
    s.add_argument("--repetition-penalty", type=float, default=1.0, metavar="P",
                   help="scores of tokens already in the caption: positive / P, negative * P (1 = off)")


def _controls(args):
    """The decoding controls, checked before any model is loaded (`generate.Controls` names a bad value)."""
    from ..models.decoding import Controls

    return Controls(args.no_repeat_ngram_size, args.repetition_penalty)


def _device_arg(s):
    s.add_argument("--device", type=_device_name, default="auto",
                   help="auto (CUDA if torch can use it, else CPU), cpu, cuda, cuda:N")


def _settings_epilog() -> str:
    from ..training.config import settings_table

    rows = settings_table()
    width = max(len(f"--{k}={t}") for _, k, t, _, _ in rows)
    out = ["settings (--key=value after the config, or keys of its [captioner] / [train] tables):"]
    for table in ("captioner", "train"):
        out.append(f"  [{table}]")
        out += [f"    {f'--{k}={t}':<{width}}  default {d!r}: {c}" for tb, k, t, d, c in rows if tb == table]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hw3", description=__doc__.splitlines()[0], formatter_class=_Help,
                                epilog="Run 'hw3 COMMAND --help' for a command's arguments and an example.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo_data(sub)
    _add_demo_models(sub)
    _add_zeroshot(sub)
    _add_train(sub)
    _add_caption(sub)
    _add_evaluate(sub)
    _add_attention(sub)
    _add_export_decoder(sub)
    return p


def _add_demo_data(sub) -> None:
    s = _command(sub, "demo-data", "write the miniature demo hw3_data/ (deterministic)",
                 "Procedurally drawn shapes with captions and object boxes, in the course's data layout.\n"
                 "The same seed gives byte-identical files.", ["hw3 demo-data build/demo/hw3_data --size small"])
    s.add_argument("out_dir", type=Path, help="the hw3_data/ folder to write")
    s.add_argument("--seed", type=_non_negative, default=0, help="random seed of the world")
    s.add_argument("--size", choices=["small", "full"], default="full", help="small: a few seconds, for tests")
    s.add_argument("--caption-order", choices=["reading", "drawn"], default="reading",
                   help="captions name a scene's objects left to right (reading), or in the order they were drawn "
                        "(the first design, an ablation)")
    s.set_defaults(func=cmd_demo_data)



def _add_demo_models(sub) -> None:
    s = _command(sub, "demo-models", "pretrain the demo world's tiny BPE, CLIP, ViT and GPT-2",
                 "Writes the models in the real file formats and an assets.json manifest that every other\n"
                 "command takes with --assets. Cached: rerunning with the same data and seed does nothing.",
                 ["hw3 demo-models build/demo/hw3_data build/demo/models"])
    s.add_argument("data_dir", type=Path, help="a demo hw3_data/ folder (from hw3 demo-data)")
    s.add_argument("out_dir", type=Path, help="folder for the models and assets.json")
    s.add_argument("--size", choices=["small", "full"], default="full", help="training budget")
    s.add_argument("--seed", type=_non_negative, default=0, help="random seed of the training")
    s.add_argument("--force", action="store_true", help="retrain even when cached outputs match")
    s.set_defaults(func=cmd_demo_models)



def _add_zeroshot(sub) -> None:
    s = _command(sub, "zeroshot", "P1: CLIP zero-shot classification -> filename,label CSV",
                 "Needs only the manifest's CLIP entry (or --model/--pretrained). Prints the accuracy with a\n"
                 "95% bootstrap interval when the file names carry class ids ({class_id}_{image_id}.png).",
                 ["hw3 zeroshot hw3_data/p1_data/val hw3_data/p1_data/id2label.json pred.csv --templates report",
                  "hw3 zeroshot val/ id2label.json pred.csv --model ViT-B-32 --pretrained openai "
                  "--template 'a photo of a {object}.'"])
    s.add_argument("image_dir", type=Path, help="folder of images to classify")
    s.add_argument("id2label", type=Path, help='JSON {"class id": "class name"}')
    s.add_argument("out_csv", type=Path, help="output CSV (filename,label)")
    _assets_arg(s)
    s.add_argument("--template", action="append", default=[], metavar="T",
                   help="a prompt with {object}; repeat for an ensemble (default: 'This is a photo of {object}')")
    s.add_argument("--templates", metavar="NAME", help="built-in set: report, photo, openai80, openai7")
    s.add_argument("--model", help="open_clip model name (overrides the manifest)")
    s.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint file (overrides the manifest)")
    s.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass")
    _device_arg(s)
    s.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    s.set_defaults(func=cmd_zeroshot)



def _add_train(sub) -> None:
    s = _command(sub, "train", "P2: train the captioner",
                 "Trains the projection, cross-attention and PEFT modules of the configured captioner on\n"
                 "p2_data/train; validates on p2_data/val; keeps checkpoint-best/-last.safetensors, log.jsonl\n"
                 "and summary.json in --out. An interrupted run resumes exactly when rerun with the same --out.\n"
                 "Any setting below overrides the config: --key=value (or --key value).",
                 ["hw3 train configs/report_lora16.toml --assets assets.json --data hw3_data/p2_data "
                  "--out runs/lora16 --lr=1e-4 --max_steps=500",
                  "hw3 train configs/demo/lora16.toml --data build/demo/hw3_data/p2_data --out runs/x --print-config",
                  "hw3 train configs/report_lora16.toml --assets assets.json --plan-gpu 11@7.5"])
    s.add_argument("config", type=Path, help="TOML config with [captioner] and [train] tables")
    _assets_arg(s)
    s.add_argument("--data", type=Path, help="the p2_data/ folder (required to train)")
    s.add_argument("--out", type=Path, help="run folder, resumed when it holds a run (required to train)")
    s.add_argument("--print-config", action="store_true", help="print the resolved config (TOML) and exit")
    s.add_argument("--force-new", action="store_true",
                   help="discard what the run folder holds (checkpoints, resume state, log) and start over")
    s.add_argument("--plan", action="store_true",
                   help="print the precision and GPU-memory plan for this machine's device and exit (2 if it does not fit)")
    s.add_argument("--plan-gpu", type=_gpu_spec, metavar="GIB[@CC]",
                   help="plan for a GPU you do not have: memory in GiB, optionally @compute capability "
                        "(11@7.5 is the RTX 2080 Ti; default capability 8.0)")
    s.more_help = _settings_epilog  # imports torch: only when the help is shown
    s.set_defaults(func=cmd_train, takes_overrides=True)



def _add_caption(sub) -> None:
    s = _command(sub, "caption", "P2: caption images -> {file name without extension: caption}",
                 "Needs the manifest's encoder and tokenizer, the decoder weights, and a trained checkpoint.\n"
                 "IMAGES may be image files and folders. OUT_JSON '-' prints 'name<TAB>caption' lines instead.",
                 ["hw3 caption hw3_data/p2_data/images/val pred.json hw3_data/p2_data/decoder_model.bin "
                  "--checkpoint runs/lora16 --assets assets.json",
                  "hw3 caption photo.jpg - decoder_model.bin --checkpoint runs/lora16 --assets assets.json"])
    s.add_argument("images", type=Path, nargs="+", metavar="IMAGES", help="image files and/or folders")
    s.add_argument("out_json", type=Path, metavar="OUT_JSON", help="output JSON, or - for stdout")
    s.add_argument("decoder_weights", type=Path, metavar="DECODER", help="the course's decoder weights file")
    s.add_argument("--checkpoint", type=Path, help="run folder or checkpoint file from hw3 train (required)")
    s.add_argument("--untrained", action="store_true", help="caption with the untrained model (no --checkpoint)")
    _assets_arg(s)
    s.add_argument("--beams", type=_positive, default=1, help="beam width (1 = greedy)")
    s.add_argument("--max-len", type=_positive, default=60, help="longest caption in tokens")
    s.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log p / length ** this")
    _decoding_args(s)
    s.add_argument("--batch-size", type=_positive, default=16, help="images decoded together")
    s.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: dynamic int8 decoder on the CPU (faster; captions can change). Never the default")
    s.add_argument("--no-packed", action="store_true",
                   help="CPU: decode without the packed copy of the decoder weights (less memory, the same captions)")
    _device_arg(s)
    s.set_defaults(func=cmd_caption)



def _add_evaluate(sub) -> None:
    s = _command(sub, "evaluate", "P2: CIDEr-D and CLIPScore of a prediction file, like the course's evaluator",
                 "Needs only the manifest's CLIP entry (nothing with --no-clip). Also CHAIR-i, CHAIR-s and object\n"
                 "recall over the 80 COCO categories (objects from the reference captions, and from --instances).\n"
                 "Writes per-image scores to --per-image (default PRED.scores.json).",
                 ["hw3 evaluate pred.json --images hw3_data/p2_data/images/val "
                  "--annotations hw3_data/p2_data/val.json --assets assets.json"])
    s.add_argument("pred_json", type=Path, help="predictions {file name without extension: caption}")
    s.add_argument("--images", type=Path, required=True, help="the images the annotations name")
    s.add_argument("--annotations", type=Path, required=True, help="val.json (COCO-captions shape)")
    _assets_arg(s)
    s.add_argument("--tokenizer", choices=["ptb", "python"], default="ptb",
                   help="ptb: Stanford PTB tokenizer (Java), as the course; python: Java-free equivalent")
    s.add_argument("--photo-prefix", action="store_true", help='prefix captions with "A photo depicts" for CLIPScore')
    s.add_argument("--no-clip", action="store_true", help="CIDEr only")
    s.add_argument("--instances", type=Path, help="a COCO instances file: its annotated objects count for CHAIR too")
    s.add_argument("--per-image", type=Path, help="where per-image scores go (default: PRED.scores.json)")
    _device_arg(s)
    s.set_defaults(func=cmd_evaluate)



def _add_attention(sub) -> None:
    s = _command(sub, "attention", "P3: per-token attention maps as figures and a standalone HTML viewer",
                 "Captions each image with attention capture and draws one map per generated token.",
                 ["hw3 attention hw3_data/p3_data/images --checkpoint runs/lora16 --assets assets.json "
                  "--out figures/p3 --html viewer.html"])
    s.add_argument("images", type=Path, nargs="+", help="image files and/or folders")
    s.add_argument("--checkpoint", type=Path, help="run folder or checkpoint file (default: untrained model)")
    _assets_arg(s)
    s.add_argument("--out", type=Path, required=True, help="folder for the per-image figures")
    s.add_argument("--html", type=Path, help="also write a standalone HTML viewer here")
    s.add_argument("--method", choices=["raw", "rollout", "relevance"], default="raw", help="how maps are made")
    s.add_argument("--layers", default="last", help="last, all, or comma-separated layer indices")
    s.add_argument("--heads", default="mean", help="mean, max, or comma-separated head indices")
    s.add_argument("--beams", type=_positive, default=1, help="beam width (1 = greedy)")
    s.add_argument("--max-len", type=_positive, default=60, help="longest caption in tokens")
    _decoding_args(s)
    _device_arg(s)
    s.set_defaults(func=cmd_attention)



def _add_export_decoder(sub) -> None:
    s = _command(sub, "export-decoder", "write the course decoder file from a transformers GPT-2 folder",
                 "Converts GPT2LMHeadModel weights (config.json + model.safetensors) to the course's format.",
                 ["hw3 export-decoder gpt2/ decoder_model.bin"])
    s.add_argument("gpt2_dir", type=Path, help="folder with config.json + model.safetensors (GPT2LMHeadModel)")
    s.add_argument("out", type=Path, help="output decoder weights file (e.g. decoder_model.bin)")
    s.set_defaults(func=cmd_export_decoder)



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


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a scheduler's or `kill`'s) ends the command as Ctrl-C does: the exception unwinds, so child
    processes (the Java tokenizer) are killed and temporary folders removed, instead of left behind."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for stream in (sys.stdout, sys.stderr):  # file names with undecodable bytes print, never crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with warnings.catch_warnings(), _terminate_as_interrupt():  # both as before once the command returns
            warnings.showwarning = _warn_one_line  # warnings print as one line while the command runs
            args.overrides = _parse_overrides(extra)
            from ..core.files import check_outputs

            inputs, files, folders = PATHS[args.command](args)
            check_outputs(files, folders, inputs)
            return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every error ends in one line; --debug keeps the traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: {error_line(e, f'hw3 {args.command}')}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
