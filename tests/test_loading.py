"""Weights load with one copy in memory and say what does not fit (#21): the loaders give exactly what
timm and open_clip give, run no random initialisation, and name missing / unexpected keys and the
first shape mismatch in one line; `--debug` keeps the original exception as the cause."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from hw3lib.app.cli import main
from hw3lib.core.errors import HW3Error
from hw3lib.core.manifest import ClipSpec, EncoderSpec, load_manifest
from hw3lib.core.weights import mismatch
from hw3lib.models.decoder_file import load_decoder, save_decoder
from hw3lib.models.gpt2 import GPT2, GPT2Config
from hw3lib.models.loading import create_encoder, load_clip


def test_encoder_equals_timms_own_loading(small_models):
    """The demo encoder file is in OpenAI-CLIP format: timm's filter converts it, as timm would."""
    import timm

    spec = load_manifest(small_models).encoder
    ours = create_encoder(spec).state_dict()
    theirs = timm.create_model(spec.model, pretrained=True, pretrained_cfg_overlay={**spec.pretrained_cfg,
                               "file": spec.checkpoint}, **spec.model_kwargs).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_clip_equals_open_clips_own_loading(small_models):
    import open_clip

    spec = load_manifest(small_models).clip
    ours = load_clip(spec).model.state_dict()  # registers the demo config
    theirs = open_clip.create_model_and_transforms(spec.model, pretrained=spec.pretrained)[0].state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_loading_leaves_the_generator_and_gives_the_files_tensors(small_models):
    """Built with empty parameters: the generator is as it was (new modules initialised after a load
    do not depend on the encoder's architecture), and the parameters are the file's tensors."""
    m = load_manifest(small_models)
    before = torch.get_rng_state()
    enc = create_encoder(m.encoder)
    load_clip(m.clip)
    dec = load_decoder(m.decoder.weights)
    assert torch.equal(before, torch.get_rng_state())
    file = torch.load(m.decoder.weights, weights_only=True)
    assert torch.equal(dec.wte.weight, file["wte.weight"])
    assert torch.equal(dec.h[0].attn.c_attn.weight, file["h.0.attn.c_attn.weight"].t())
    assert not any(p.is_meta for p in [*enc.parameters(), *dec.parameters()])


def test_fresh_cross_attention_is_seeded_and_gpt2_initialised(tmp_path):
    save_decoder(GPT2(GPT2Config.tiny()), tmp_path / "d.bin")
    torch.manual_seed(3)
    a = load_decoder(tmp_path / "d.bin", cross_attention=True)
    torch.manual_seed(3)
    b = load_decoder(tmp_path / "d.bin", cross_attention=True)
    q = a.h[1].crossattention.q_attn
    assert torch.equal(q.weight, b.h[1].crossattention.q_attn.weight) and torch.all(q.bias == 0)
    assert 0.01 < q.weight.std().item() < 0.03  # GPT-2's normal(0, 0.02)
    assert torch.all(a.h[0].ln_cross_attn.weight == 1)


def test_mismatch_names_five_keys_of_each_kind_and_the_first_shape():
    own = {f"k{i}": torch.zeros(2) for i in range(8)} | {"w": torch.zeros(3, 4)}
    sd = {"w": torch.zeros(4, 3)} | {f"x{i}": torch.zeros(1) for i in range(2)}
    text = mismatch(own, sd)
    assert text.startswith("missing 8: k0, k1, k2, k3, k4 ...; unexpected 2: x0, x1; ")
    assert text.endswith("shape mismatch 1: w is (4, 3) in the file, (3, 4) in the model")
    assert mismatch(own, dict(own)) is None


def test_encoder_file_that_does_not_fit_names_its_keys(tmp_path, small_models):
    spec = load_manifest(small_models).encoder
    enc = create_encoder(spec)
    sd = dict(enc.state_dict())
    for k in [k for k in sd if k.startswith("blocks.1.")]:
        del sd[k]
    sd["extra.weight"] = torch.zeros(1)
    sd["norm.weight"] = torch.zeros(7)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(HW3Error) as e:
        create_encoder(EncoderSpec(**{**spec.__dict__, "checkpoint": str(tmp_path / "bad.safetensors")}))
    msg = str(e.value)
    assert "\n" not in msg and "bad.safetensors: weights do not fit timm model" in msg
    assert "missing 12: blocks.1." in msg and "unexpected 1: extra.weight" in msg
    assert "shape mismatch 1: norm.weight is (7,) in the file, (128,) in the model" in msg


def test_encoder_file_without_its_head_says_how_to_load_it(tmp_path, small_models):
    spec = load_manifest(small_models).encoder
    sd = {k: v.contiguous() for k, v in create_encoder(spec).state_dict().items() if not k.startswith("head.")}
    save_file(sd, str(tmp_path / "nohead.safetensors"))
    bad = EncoderSpec(**{**spec.__dict__, "checkpoint": str(tmp_path / "nohead.safetensors")})
    with pytest.raises(HW3Error, match=r"missing 2: head\.bias, head\.weight.*num_classes = 0"):
        create_encoder(bad)
    headless = EncoderSpec(**{**bad.__dict__, "model_kwargs": {**spec.model_kwargs, "num_classes": 0},
                              "pretrained_cfg": {**spec.pretrained_cfg, "num_classes": 0}})
    assert create_encoder(headless).num_features == create_encoder(spec).num_features
    # and a file with the head loads into a model without one (timm drops the classifier)
    save_file({k: v.contiguous() for k, v in create_encoder(spec).state_dict().items()}, str(tmp_path / "head.safetensors"))
    create_encoder(EncoderSpec(**{**headless.__dict__, "checkpoint": str(tmp_path / "head.safetensors")}))


def test_clip_file_that_does_not_fit_names_its_keys(tmp_path, small_models):
    spec = load_manifest(small_models).clip
    sd = load_file(spec.pretrained)
    sd.pop("logit_scale")
    save_file(sd, str(tmp_path / "c.safetensors"))
    with pytest.raises(HW3Error, match=r"c\.safetensors: checkpoint does not fit open_clip .*missing 1: logit_scale"):
        load_clip(ClipSpec(spec.model, str(tmp_path / "c.safetensors"), spec.config))


def test_debug_shows_the_original_exception_as_the_cause(tmp_path, small_models, small_world, capsys):
    (tmp_path / "garbage.bin").write_bytes(b"not a zip file at all" * 10)
    img = next((small_world / "p2_data" / "images" / "val").glob("*.jpg"))
    args = ["caption", str(img), "-", str(tmp_path / "garbage.bin"), "--untrained", "--assets", str(small_models),
            "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "garbage.bin: not a readable weights file" in err
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "The above exception was the direct cause of the following exception" in err
