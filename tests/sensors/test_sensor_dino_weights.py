"""DINO ViT-S/16 weights: loaded through timm's pretrained path from a local safetensors file."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from robodual_core.errors import RobodualError
from robodual_sensors import backbones
from robodual_sensors.encoders import RGBStaticEncoder


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    """No env var, an empty robodual home and an empty Hugging Face cache."""
    import huggingface_hub

    monkeypatch.delenv(backbones.DINO_ENV, raising=False)
    monkeypatch.setenv("ROBODUAL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(backbones.DINO_ARCH, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.state_dict()


def test_weights_round_trip_exactly(dino_file, no_weights_anywhere):
    path, state = dino_file
    enc = RGBStaticEncoder(pretrained=str(path))
    loaded = enc.backbone.vit.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not enc.trainable and not any(p.requires_grad for p in enc.backbone.parameters())


def test_weights_found_through_env_and_home(dino_file, no_weights_anywhere, monkeypatch, tmp_path):
    path, _ = dino_file
    monkeypatch.setenv(backbones.DINO_ENV, str(path))
    assert backbones.find_dino_weights(None) == path
    monkeypatch.delenv(backbones.DINO_ENV)
    home_file = tmp_path / "home" / "weights" / f"{backbones.DINO_ARCH}.safetensors"
    home_file.parent.mkdir(parents=True)
    home_file.write_bytes(path.read_bytes())
    assert backbones.find_dino_weights(None) == home_file


def test_missing_weights_is_a_clear_error(no_weights_anywhere, tmp_path):
    with pytest.raises(RobodualError, match="DINO ViT-S/16 weights not found") as info:
        RGBStaticEncoder(image_size=32)
    message = str(info.value)
    assert backbones.DINO_ENV in message and "random_init" in message and "model.safetensors" in message
    with pytest.raises(RobodualError, match="does not exist"):
        RGBStaticEncoder(image_size=32, pretrained=str(tmp_path / "nope.safetensors"))
    pickled = tmp_path / "dino.pth"
    pickled.write_bytes(b"not read")
    with pytest.raises(RobodualError, match="must be a .safetensors file"):
        RGBStaticEncoder(image_size=32, pretrained=str(pickled))


def test_wrong_weights_file_is_a_clear_error(tmp_path, no_weights_anywhere):
    bad = tmp_path / "bad.safetensors"
    save_file({"something": torch.zeros(2)}, str(bad))
    with pytest.raises(RobodualError, match="do not fit"):
        RGBStaticEncoder(image_size=32, pretrained=str(bad))


def test_random_init_only_when_asked_with_a_warning(no_weights_anywhere, recwarn):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = RGBStaticEncoder(image_size=32, random_init=True)
    assert any("randomly initialised" in str(w.message) for w in caught)
    assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 8, 256)
