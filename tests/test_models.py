"""Model loading: names, tags offline, local files, non-ViT towers."""


import pytest
import torch
from safetensors.torch import save_file

import ltcutils as ltc
from ltcutils.models import ModelLoadError, load_model


def test_tiny_config_is_registered(tiny):
    cfg = tiny.hooked.cfg
    assert (cfg.image_size, cfg.patch_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_embed) == (48, 8, 128, 6, 8, 64)
    assert tiny.fingerprint.startswith("random:sha256:")
    emb = tiny.encode_text(["a photo of a landbird", "a photo of a waterbird"])
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelLoadError, match="unknown model name 'ViT-B-61'.*Did you mean"):
        load_model("ViT-B-61")


def test_non_vit_tower_is_refused():
    with pytest.raises(ModelLoadError, match="not a ViT: LTC needs attention heads"):
        load_model("RN50")
    with pytest.raises(ModelLoadError, match="not a ViT"):
        load_model("convnext_base")


def test_unavailable_tag_fails_offline_with_a_fix():
    with pytest.raises(ModelLoadError, match=r"not available.*pretrained='/path/to/"):
        load_model("ViT-B-32", pretrained="laion2b_s34b_b79k")


def test_unknown_tag_lists_the_valid_ones():
    with pytest.raises(ModelLoadError, match="Tags for ViT-B-16: .*laion2b_s34b_b88k"):
        load_model("ViT-B-16", pretrained="laion9b")


def test_local_checkpoint_roundtrip_and_fingerprint(tiny, tmp_path):
    p = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.clip.state_dict().items()}, str(p))
    m = load_model("ltc-tiny", pretrained=p)
    assert m.fingerprint.startswith("sha256:")
    size = tiny.hooked.cfg.image_size
    px = torch.randn(2, 3, size, size)
    assert torch.allclose(m.encode_image(px), tiny.encode_image(px), atol=1e-6)
    # a .pt file goes through torch.load(weights_only=True)
    p2 = tmp_path / "tiny.pt"
    torch.save(tiny.clip.state_dict(), p2)
    assert torch.allclose(load_model("ltc-tiny", pretrained=p2).encode_image(px), tiny.encode_image(px), atol=1e-6)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        load_model("ltc-tiny", pretrained=tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="could not load checkpoint .*bad.safetensors"):
        load_model("ltc-tiny", pretrained=bad)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(ModelLoadError, match="could not load checkpoint"):
        load_model("ltc-tiny", pretrained=wrong)


def test_quickgelu_switch():
    m = load_model("ltc-tiny", quick_gelu=True)
    assert m.hooked.cfg.act == "quick_gelu"
