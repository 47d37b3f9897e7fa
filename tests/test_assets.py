"""The asset manifest, real-size architectures without a hub, and the demo models loading through the
same loaders as real ones (timm reads the tiny CLIP's tower as it reads real CLIP checkpoints)."""

import json
import shutil

import pytest
import torch

from hw3lib.core.errors import HW3Error
from hw3lib.core.images import open_image
from hw3lib.core.manifest import EncoderSpec, check_files, load_manifest
from hw3lib.models.gpt2 import GPT2, GPT2Config
from hw3lib.models.loading import (
    create_encoder,
    encoder_data_config,
    encoder_transform,
    load_clip,
    load_decoder_from_manifest,
    load_tokenizer,
)


def test_real_manifest_names_hub_models():
    m = load_manifest("real")
    assert (m.clip.model, m.clip.pretrained) == ("ViT-B-32", "openai")
    assert m.encoder.model == "vit_gigantic_patch14_clip_224" and m.tokenizer.vocab_size == 50257


def test_manifest_paths_are_relative_to_it(small_models):
    m = load_manifest(small_models)
    root = small_models.parent.resolve()
    assert m.decoder.weights == str(root / "decoder" / "decoder_model.bin")
    assert m.clip.pretrained == str(root / "clip" / "open_clip_model.safetensors")
    check_files(m)


def test_manifest_errors(tmp_path, small_models):
    raw = json.loads(small_models.read_text())
    bad = dict(raw, decoder={**raw["decoder"], "typo": 1})
    (tmp_path / "a.json").write_text(json.dumps(bad))
    with pytest.raises(HW3Error, match=r"a.json: decoder.typo=1 \(unexpected keyword argument\)"):
        load_manifest(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "clip"}))
    partial = load_manifest(tmp_path / "b.json")  # a manifest may hold only what its commands use
    assert partial.clip is None
    with pytest.raises(HW3Error, match="no 'clip' section"):
        check_files(partial, ("clip",))
    (tmp_path / "c.json").write_text(json.dumps(raw))  # same relative paths, but nothing beside it
    with pytest.raises(HW3Error, match="missing file.*decoder.weights"):
        check_files(load_manifest(tmp_path / "c.json"))


def test_real_size_architectures_build_without_a_hub():
    enc = create_encoder(EncoderSpec("vit_gigantic_patch14_clip_224"), device="meta")
    n_enc = sum(p.numel() for p in enc.parameters())
    assert 1.7e9 < n_enc < 1.9e9
    feats = enc.forward_features(torch.empty(1, 3, 224, 224, device="meta"))
    assert tuple(feats.shape) == (1, 257, 1664)  # CLS + 16x16 patches, all kept for cross-attention
    assert encoder_data_config(enc)["input_size"] == (3, 224, 224)
    with torch.device("meta"):
        gpt = GPT2(GPT2Config.small())
    import open_clip

    clip = open_clip.create_model("ViT-B-32", pretrained=None)  # random weights, ~1 s on the CPU
    assert sum(p.numel() for p in gpt.parameters()) == 124_439_808  # GPT-2 small, head tied
    assert 150e6 < sum(p.numel() for p in clip.parameters()) < 152e6


def test_timm_reads_the_demo_clip_tower_like_a_real_clip_checkpoint(small_models):
    m = load_manifest(small_models)
    clip = load_clip(m.clip)
    enc = create_encoder(m.encoder)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = clip.model.encode_image(x)  # open_clip: ln_post(CLS) @ proj
        got = enc.forward_head(enc.forward_features(x))  # timm: norm -> token pool -> head
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert enc.forward_features(x).shape == (2, 65, 128)
    assert not any(p.requires_grad for p in enc.parameters())


def test_encoder_preprocessing_comes_from_its_config(small_models, small_world):
    m = load_manifest(small_models)
    clip = load_clip(m.clip)
    enc = create_encoder(m.encoder)
    cfg = encoder_data_config(enc)
    assert cfg["input_size"] == (3, 96, 96) and cfg["interpolation"] == "bicubic"
    img = open_image(next((small_world / "p2_data" / "images" / "val").glob("*.jpg")))
    torch.testing.assert_close(encoder_transform(enc)(img), clip.preprocess(img), atol=2e-2, rtol=0)


def test_wrong_architecture_and_truncated_checkpoints(tmp_path, small_models):
    m = load_manifest(small_models)
    spec = EncoderSpec(**{**m.encoder.__dict__, "model_kwargs": {**m.encoder.model_kwargs, "embed_dim": 64}})
    with pytest.raises(HW3Error, match="do not fit"):
        create_encoder(spec)
    data = open(m.encoder.checkpoint, "rb").read()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    spec = EncoderSpec(**{**m.encoder.__dict__, "checkpoint": str(tmp_path / "t.safetensors")})
    with pytest.raises(HW3Error):
        create_encoder(spec)
    # a CLIP checkpoint for another architecture
    cfg = json.loads(open(m.clip.config).read())
    cfg["vision_cfg"]["layers"] += 1
    (tmp_path / "other.json").write_text(json.dumps(cfg))
    shutil.copy(m.clip.pretrained, tmp_path / "w.safetensors")
    from hw3lib.core.manifest import ClipSpec

    with pytest.raises(HW3Error, match="does not fit"):
        load_clip(ClipSpec("hw3-other-clip", str(tmp_path / "w.safetensors"), str(tmp_path / "other.json")))


def test_tokenizer_and_decoder_from_manifest(small_models):
    m = load_manifest(small_models)
    tok = load_tokenizer(m)
    dec = load_decoder_from_manifest(m)
    assert dec.config.vocab_size == tok.vocab_size
    assert tok.decode(tok.encode("a small red circle")) == "a small red circle"


def test_a_manifest_with_sections_left_out_round_trips(tmp_path, small_models):
    """The negation-tuned CLIP's manifest has a CLIP section only: what is None is written as missing,
    and reads back as None."""
    from hw3lib.core.manifest import Manifest, load_manifest

    m = load_manifest(small_models)
    Manifest(clip=m.clip, encoder=None, decoder=None, tokenizer=None).save(tmp_path / "a.json")
    assert set(json.loads((tmp_path / "a.json").read_text())) == {"clip"}
    back = load_manifest(tmp_path / "a.json")
    assert back.clip == m.clip and back.encoder is None and back.decoder is None and back.tokenizer is None
