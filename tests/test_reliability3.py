"""Reliability III (#23): no file is believed about itself, a resumed run is the same run, HTML escapes
what it embeds, and every error is one line. Each bad case exits 2 with one `error:` line naming the
file, field or argument, and leaves every input byte-identical (sha256)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hw3lib.core.files import atomic_write_text, remove_stale_temporaries

from .conftest import ROOT, private_copies, run_cli
from .test_reliability_cli import check_refused, fingerprint, refused

CONFIG = ROOT / "configs" / "demo" / "lora16.toml"
TRAIN = ["--max_steps=4", "--val_every=2", "--select_images=4", "--batch_size=16", "--lora_r=2", "--device=cpu"]


@pytest.fixture(scope="module")
def world(small_world, small_models, small_run, tmp_path_factory):
    return private_copies(small_world, small_models, small_run, tmp_path_factory.mktemp("rel3"))


def manifest_with(world, tmp_path, **changes) -> Path:
    """A copy of the manifest (absolute paths) with sections or fields replaced: {"decoder.n_head": 0}."""
    raw = world["manifest"].to_dict()
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        elif value is None:
            raw.pop(section)
        else:
            raw[section] = value
    path = tmp_path / "assets.json"
    path.write_text(json.dumps(raw))
    return path


def caption(world, decoder, out, assets=None, checkpoint=None):
    """hw3 caption of the val images: untrained unless a checkpoint is given."""
    tail = ["--checkpoint", checkpoint] if checkpoint else ["--untrained"]
    return ["caption", world["val"], out, decoder, "--assets", assets or world["assets"], *tail]


# -- files that describe themselves -------------------------------------------------------------------


def decoder_variant(world, tmp_path, name, change) -> Path:
    sd = torch.load(world["decoder"], weights_only=True)
    change(sd)
    path = tmp_path / name
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("name, change, needle", [
    ("int64", lambda sd: sd.update({"wte.weight": sd["wte.weight"].long()}), "holds torch.int64 values"),
    ("nan", lambda sd: sd["wte.weight"].__setitem__((3, 5), float("nan")), "wte.weight holds non-finite values"),
    ("rows_bomb", lambda sd: sd.update({"wte.weight": sd["wte.weight"][:1].expand(10**9, -1)}),
     "claims shape (1000000000,"),
    ("layer_bomb", lambda sd: sd.update({"h.999999999.ln_1.weight": sd["h.0.ln_1.weight"]}), "h.999999999"),
    ("layer_gap", lambda sd: sd.update({"h.5.ln_1.weight": sd["h.0.ln_1.weight"]}), "are missing between h.0 and h.5"),
    ("superscript", lambda sd: sd.update({"h.².ln_1.weight": sd["h.0.ln_1.weight"]}), "does not name a block"),
])
def test_decoder_files_are_checked_before_use(world, tmp_path, name, change, needle):
    bad = decoder_variant(world, tmp_path, f"{name}.bin", change)
    check_refused(caption(world, bad, tmp_path / "p.json"), [bad, world["val"]], str(bad), needle)


def checkpoint_with(world, tmp_path, **metadata) -> Path:
    from safetensors import safe_open

    src = world["run"] / "checkpoint-best.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update({k: v for k, v in metadata.items() if v is not None})
    for k in [k for k, v in metadata.items() if v is None]:
        meta.pop(k)
    path = tmp_path / "ck.safetensors"
    save_file(load_file(str(src)), str(path), metadata=meta)
    return path


@pytest.mark.parametrize("metadata, needle", [
    ({"captioner": None}, "metadata field 'captioner' is missing"),
    ({"captioner": "{not json"}, "metadata field 'captioner' is not valid JSON"),
    ({"captioner": "[1, 2]"}, "metadata field 'captioner' should be a dict"),
    ({"captioner": json.dumps({"peft": "lora", "lora_r": 10**9})}, "lora_r=1000000000 (input should be less than or equal to 4096)"),
    ({"captioner": json.dumps({"peft": "lora", "lora_r": "16"})}, "lora_r='16' (input should be a valid integer)"),
    ({"captioner": json.dumps({"peft": "lora", "bogus": 1})}, "bogus=1 (unexpected keyword argument)"),
    ({"captioner": json.dumps({"peft": "lora", "lora_r": 64})}, "metadata and tensors disagree"),
    ({"encoder_dim": "1e9"}, "metadata field 'encoder_dim' should be a int"),
    ({"encoder_dim": "99999999"}, "'encoder_dim' = 99999999 is outside"),
])
def test_checkpoint_metadata_is_checked_before_building(world, tmp_path, metadata, needle):
    ck = checkpoint_with(world, tmp_path, **metadata)
    check_refused(caption(world, world["decoder"], tmp_path / "p.json", checkpoint=ck), [ck, world["val"]], str(ck),
                  needle)


@pytest.mark.parametrize("changes, needle", [
    ({"decoder__n_head": 0}, "decoder.n_head=0 (input should be greater than or equal to 1)"),
    ({"encoder__pretrained_cfg": {"mean": "abc"}}, "encoder.pretrained_cfg.mean = 'abc'"),
    ({"encoder__pretrained_cfg": {"input_size": [3, 100000, 100000]}}, "encoder.pretrained_cfg.input_size"),
    ({"encoder__pretrained_cfg": {"std": [0.2, 0, 0.2]}}, "encoder.pretrained_cfg.std"),
    ({"encoder__model_kwargs": {"img_size": 10**6}}, "encoder.model_kwargs.img_size"),
    ({"tokenizer__vocab_size": -3}, "tokenizer.vocab_size=-3"),
    ({"encoder": None}, "no 'encoder' section"),
])
def test_manifest_fields_are_checked(world, tmp_path, changes, needle):
    assets = manifest_with(world, tmp_path, **changes)
    check_refused(caption(world, world["decoder"], tmp_path / "p.json", assets), [assets, world["val"]], needle)


def test_a_manifest_with_only_the_clip_section_serves_zeroshot(world, tmp_path):
    assets = manifest_with(world, tmp_path, encoder=None, decoder=None, tokenizer=None)
    p1 = world["data"] / "p1_data"
    r = run_cli("zeroshot", p1 / "val", p1 / "id2label.json", tmp_path / "p.csv", "--assets", assets)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "accuracy" in r.stdout


@pytest.mark.parametrize("template", ["a {object:>20000000000}", "{object!r}", "a {object.__class__}", "{0} {object}"])
def test_templates_hold_only_the_object_field(world, tmp_path, template):
    p1 = world["data"] / "p1_data"
    check_refused(["zeroshot", p1 / "val", p1 / "id2label.json", tmp_path / "p.csv", "--assets", world["assets"],
                   "--template", template], [p1], "template", "not allowed")


def test_id2label_keys_are_ascii_digits(world, tmp_path):
    p1 = world["data"] / "p1_data"
    bad = tmp_path / "id2label.json"
    bad.write_text(json.dumps(json.loads((p1 / "id2label.json").read_text()) | {"²": "square"}))
    check_refused(["zeroshot", p1 / "val", bad, tmp_path / "p.csv", "--assets", world["assets"]], [bad],
                  "key '²' is not a class id")


# -- the no-overwrite rule in every direction ---------------------------------------------------------


def test_attention_never_writes_over_an_input_image(world, tmp_path):
    one = sorted((world["data"] / "p3_data" / "images").iterdir())[0]
    img = tmp_path / "img.png"
    shutil.copy(one, img)
    shutil.copy(one, tmp_path / "img_attention.png")  # an input where img.png's figure would go
    check_refused(["attention", img, tmp_path / "img_attention.png", "--checkpoint", world["run"], "--assets",
                   world["assets"], "--out", tmp_path], [img, tmp_path / "img_attention.png"],
                  "refusing to write over an input", "img_attention.png")


def test_train_never_writes_over_its_config_or_manifest(world, tmp_path):
    run = tmp_path / "X"
    run.mkdir()
    shutil.copy(CONFIG, run / "config.json")  # a TOML config that happens to be called config.json
    p2 = world["data"] / "p2_data"
    check_refused(["train", run / "config.json", "--data", p2, "--out", run, "--assets", world["assets"], *TRAIN],
                  [run / "config.json"], "refusing to write over an input", "config.json")
    shutil.copy(world["assets"], run / "summary.json")
    check_refused(["train", CONFIG, "--data", p2, "--out", run, "--assets", run / "summary.json", *TRAIN],
                  [run / "summary.json"], "summary.json")


def test_cache_dir_obeys_the_output_rules(world):
    p2 = world["data"] / "p2_data"
    check_refused(["train", CONFIG, "--data", p2, "--out", world["root"] / "r", "--assets", world["assets"], *TRAIN,
                   f"--cache_dir={p2 / 'images'}"], [p2], "cache_dir", "input folder")


# -- a resumed run is the same run --------------------------------------------------------------------


def hw3_env(*args, fault=None, errno=0):
    """`hw3 ARGS` in a new process; with `fault` ("POINT:N") killed (or, with `errno`, failing with that
    OSError) the N-th time it passes POINT."""
    e = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    entry = ["-m", "tests.faults", fault, str(errno)] if fault else ["-m", "hw3lib"]
    return subprocess.run([sys.executable, *entry, *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_a_killed_run_refuses_to_resume_over_changed_data_and_force_new_starts_over(world, tmp_path):
    data = shutil.copytree(world["data"] / "p2_data", tmp_path / "p2_data")
    shutil.copy(world["data"] / "DEMO.json", tmp_path / "DEMO.json")  # the objects' words: supervision needs them
    run = tmp_path / "run"
    args = ["train", CONFIG, "--data", data, "--out", run, "--assets", world["assets"], *TRAIN]
    assert hw3_env(*args, fault="step:3").returncode == -9  # killed after a save at step 2
    assert (run / "resume.pt").is_file()
    refs = json.loads((data / "train.json").read_text())
    refs["annotations"][0]["caption"] = "something else entirely"
    (data / "train.json").write_text(json.dumps(refs))
    def state():  # everything but the lock file, which each run rewrites with its pid
        return {k: v for k, v in fingerprint(run).items() if not k.endswith(".lock")}

    before = state()
    line = refused(hw3_env(*args), "inputs changed", "train.json", "--force-new")
    assert "val.json" not in line and state() == before
    r = hw3_env(*args, "--force-new")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" not in r.stdout
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    preds = json.loads((run / "val_predictions.json").read_text())  # hw3 train writes it, as the report does
    assert len(preds) == len(list((data / "images" / "val").iterdir()))


def test_resume_state_schema(world, tmp_path):
    from hw3lib.core.errors import HW3Error
    from hw3lib.training.runfolder import RunFolder

    folder = RunFolder(tmp_path)
    for bad, needle in (([1, 2], "not a resume state (a list"), ({"trainable": {}}, "optimizer (field required"),
                        ({"trainable": {}, "optimizer": {}, "torch_rng": torch.zeros(1, dtype=torch.uint8),
                          "state": {"step": -1, "epoch": 0, "micro": 0}, "config": "", "inputs": {}}, "state.step=-1")):
        torch.save(bad, tmp_path / "resume.pt")
        with pytest.raises(HW3Error) as e:
            folder.read_resume()
        assert needle in str(e.value)


# -- HTML escapes what it embeds ------------------------------------------------------------------------


def hostile_viewer(tmp_path) -> Path:
    """A viewer whose token text would close the JSON <script> and run code, were it written raw."""
    import numpy as np
    from PIL import Image

    from hw3lib.attention.maps import CaptionAttention
    from hw3lib.attention.viewer import html_viewer

    img = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(img)
    evil = "</script><script>document.title='pwned';window.pwned=1</script><!--"
    ca = CaptionAttention(path=img, caption=evil, token_ids=[1, 2], token_texts=[evil, " &amp; <b>"],
                          attention=torch.rand(2, 1, 1, 5), feats=torch.zeros(5, 4), pixels=torch.zeros(3, 4, 4),
                          grid=(2, 2), n_prefix=1, eot_id=2)
    page = tmp_path / "viewer.html"
    atomic_write_text(page, html_viewer([(ca, torch.rand(2, 4))]))
    return page


def test_viewer_json_has_no_markup(tmp_path):
    page = hostile_viewer(tmp_path).read_text()
    data = page.split('class="data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data and "&" not in data
    assert page.count("<script") == 2  # the data block and the page's own script, nothing injected


@pytest.mark.browser
def test_hostile_token_does_not_execute_in_a_browser(tmp_path):
    from .conftest import headless_chrome

    page = hostile_viewer(tmp_path)
    driver = headless_chrome(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        assert driver.execute_script("return window.pwned === undefined")
        assert driver.title != "pwned"
        token = driver.find_element("css selector", ".token").text
        assert "</script><script>" in token  # shown as text, exactly
    finally:
        driver.quit()


# -- one line for every error -------------------------------------------------------------------------


def deep_json(n=100_000) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("target", ["annotations", "predictions", "manifest"])
def test_json_nested_100000_deep(world, tmp_path, target):
    p2 = world["data"] / "p2_data"
    bad = tmp_path / f"{target}.json"
    bad.write_text(deep_json())
    pred, ann = tmp_path / "pred.json", p2 / "val.json"
    pred.write_text(json.dumps({"x": "a shape"}))
    args = {"annotations": ["evaluate", pred, "--images", p2 / "images" / "val", "--annotations", bad, "--no-clip"],
            "predictions": ["evaluate", bad, "--images", p2 / "images" / "val", "--annotations", ann, "--no-clip"],
            "manifest": caption(world, world["decoder"], tmp_path / "p.json", bad)}[target]
    check_refused(args, [bad], str(bad), "nested too deeply")


def test_a_null_byte_in_a_file_name(world, tmp_path):
    p2 = world["data"] / "p2_data"
    refs = json.loads((p2 / "val.json").read_text())
    refs["images"][0]["file_name"] = "a\x00b.jpg"
    bad = tmp_path / "val.json"
    bad.write_text(json.dumps(refs))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"x": "a shape"}))
    check_refused(["evaluate", pred, "--images", p2 / "images" / "val", "--annotations", bad, "--no-clip"], [bad],
                  "null byte")


@pytest.mark.parametrize("setting, needle", [
    ("--epochs=1e400", "epochs"), ("--seed=1e30", "seed"), ("--lora_dropout=2", "lora_dropout"),
    ("--lora_targets=nosuchmodule", "lora_targets=nosuchmodule: no decoder module matched"),
    ("--lr=inf", "lr=inf"), ("--grad_accum=100000", "grad_accum=100000: an epoch has only"),
])
def test_bad_settings_give_one_line(world, tmp_path, setting, needle):
    p2 = world["data"] / "p2_data"
    check_refused(["train", CONFIG, "--data", p2, "--out", tmp_path / "run", "--assets", world["assets"], *TRAIN,
                   setting], [p2], needle)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resume.pt", "checkpoint-last.safetensors"])
def test_disk_full_while_saving_names_the_file_and_loses_nothing(world, tmp_path, name):
    run = tmp_path / "run"
    args = ["train", CONFIG, "--data", world["data"] / "p2_data", "--out", run, "--assets", world["assets"], *TRAIN]
    r = hw3_env(*args, fault=f"write:{name}:2", errno=28)  # the second save of that file fails
    line = refused(r, str(run / name), "No space left on device", "previous file")
    assert "internal error" not in line
    assert not list(run.glob(".*.tmp"))
    torch.load(run / "resume.pt", weights_only=True)  # the first save is whole
    r = hw3_env(*args)  # and the run resumes from it
    assert r.returncode == 0 and "resuming at step 2" in r.stdout, r.stderr[-2000:]


def test_an_internal_error_is_one_labelled_line(tmp_path, monkeypatch, capsys):
    """A bug (not an input problem) still ends in one line, labelled so it is not taken for bad input."""
    from hw3lib.app import cli
    from hw3lib.models import decoder_file as decoder

    def boom(src, out):
        raise KeyError("oops")

    monkeypatch.setattr(decoder, "export_decoder_from_transformers", boom)
    (tmp_path / "gpt2").mkdir()
    assert cli.main(["export-decoder", str(tmp_path / "gpt2"), str(tmp_path / "o.bin")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: hw3 export-decoder: internal error (please report): KeyError: 'oops'"]


def report_project(tmp_path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", project / "notebooks", ignore=shutil.ignore_patterns("executed"))
    shutil.copytree(ROOT / "configs", project / "configs")
    (project / "figures").mkdir()
    return project


def test_the_report_on_a_read_only_project_is_one_line(world, tmp_path, monkeypatch, capsys):
    """Root writes anywhere, so the read-only folder is os.access saying no, as it does for a user."""
    from hw3lib.app import report

    project = report_project(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert report.main(["--data", str(world["data"]), "--assets", str(world["assets"]), "--project", str(project)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --figures") and "not writable" in err[0]


def test_the_report_refuses_inputs_inside_its_outputs(world, tmp_path):
    project = report_project(tmp_path)
    shutil.copy(world["assets"], project / "figures" / "summary.json")
    before = fingerprint(project / "figures")
    r = subprocess.run([sys.executable, "-m", "hw3lib.app.report", "--data", world["data"], "--assets",
                        project / "figures" / "summary.json", "--project", project], capture_output=True, text=True,
                       timeout=300)
    refused(r, "--figures", "holds the input")
    assert fingerprint(project / "figures") == before


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_special_files_are_named_for_what_they_are(world, tmp_path, kind):
    path = {"folder": tmp_path / "d", "fifo": tmp_path / "f", "device": Path("/dev/zero")}[kind]
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    line = refused(run_cli(*caption(world, path, tmp_path / "p.json")))
    assert {"folder": "a folder", "fifo": "a FIFO", "device": "a device"}[kind] in line and "not found" not in line


# -- tidy faults ---------------------------------------------------------------------------------------


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".pred.json.{dead}.abcd.tmp").write_text("half")
    (tmp_path / ".pred.json.abcd.tmp").write_text("old format, no pid")
    live = tmp_path / f".pred.json.{os.getppid()}.efgh.tmp"
    live.write_text("being written")
    atomic_write_text(tmp_path / "pred.json", "{}")  # the next write of pred.json clears its stale temporaries
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pred.json", live.name])
    assert remove_stale_temporaries(tmp_path) == 0
