"""HFVLMGeneralist on a tiny random PaliGemma saved to and reloaded from a local folder (no Hub)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from generalist_helpers import tiny_paligemma  # noqa: E402

from robodual_generalist.hf_vlm import HFVLMConfig, HFVLMGeneralist  # noqa: E402

K_G, D = 2, 3


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_paligemma")
    tiny_paligemma(folder)
    return folder


def _batch(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"obs": {"rgb_static": torch.rand(b, 3, 40, 40, generator=g)},
            "instruction": ["open the drawer", "push the red block left"][:b],
            "action": torch.rand(b, K_G, D, generator=g) * 2 - 1}


def _model(base, **kw) -> HFVLMGeneralist:
    return HFVLMGeneralist(HFVLMConfig(base=str(base), k_g=K_G, **{"lora": False, **kw}), action_dim=D)


def test_loss_decreases(base):
    torch.manual_seed(0)
    model = _model(base).train()
    batch = _batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(30):
        loss, metrics = model.loss(batch)
        assert torch.isfinite(loss)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert set(metrics) == {"action_token_acc", "action_l1"}


def test_generate_shapes_and_constraints(base):
    model = _model(base).eval()
    out = model.generate(_batch())
    tok = model.action_tokenizer
    assert tok.vocab_size == len(model.processor.tokenizer) and tok.first_action_id == tok.vocab_size - 256
    assert out.actions.shape == (2, K_G, D)
    assert out.actions.abs().max() <= 1.0
    h = model.hidden_size
    assert out.action_latents.shape == (2, K_G * D, h) and out.action_mask.all()
    assert out.task_latents.shape[0] == 2 and out.task_latents.shape[2] == h
    # the text positions of each prompt, no image placeholders: the longer instruction has more
    n = out.task_mask.sum(1)
    assert n[1] > n[0] > 0 and n[1] == out.task_latents.shape[1]
    assert torch.isfinite(out.task_latents).all() and (out.task_latents[0, n[0]:] == 0).all()
    # a sample decodes the same alone as in a left-padded batch
    single = model.generate(_batch(1))
    torch.testing.assert_close(single.actions, out.actions[:1])
    torch.testing.assert_close(single.action_latents, out.action_latents[:1], atol=1e-4, rtol=1e-4)


def test_config_round_trip_identical_logits(base):
    model = _model(base).eval()
    with torch.no_grad():  # perturb so the rebuild must load weights, not just re-read the base
        model.vlm.get_output_embeddings().weight.add_(0.01)
    meta = model.robodual_config()
    assert meta["family"] == "hf_vlm" and meta["model"]["base"] == str(base)
    rebuilt = HFVLMGeneralist.from_config(meta).eval()
    rebuilt.load_state_dict(model.state_dict())
    batch = _batch()
    inputs = model._append(model.encode_prompt(batch), model.action_tokenizer.encode(batch["action"]))
    with torch.no_grad():
        a = model.vlm(**inputs).logits
        b = rebuilt.vlm(**inputs).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_from_checkpoint_and_runner(base, tmp_path):
    import json

    import numpy as np
    from safetensors.torch import save_file

    from robodual_core.data import Normalizer
    from robodual_core.errors import RobodualError

    model = _model(base).eval()
    with torch.no_grad():
        model.vlm.get_output_embeddings().weight.add_(0.02)
    ckpt = tmp_path / "checkpoints" / "1"
    ckpt.mkdir(parents=True)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
              str(ckpt / "model.safetensors"))
    (ckpt / "model_config.json").write_text(json.dumps(model.robodual_config()))
    stats = {"action": {"min": [-2.0] * D, "max": [2.0] * D, "mean": [0.0] * D, "std": [1.0] * D,
                        "q01": [-2.0] * D, "q99": [2.0] * D}}
    (ckpt / "normalizer.json").write_text(json.dumps(Normalizer.from_stats(stats, modes={"action": "q99"}).to_dict()))
    loaded = HFVLMGeneralist.from_checkpoint(ckpt)
    torch.testing.assert_close(loaded.generate(_batch()).actions, model.generate(_batch()).actions)
    runner = HFVLMGeneralist.load_runner(ckpt)
    obs = {"rgb_static": np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)}
    out = runner.predict(obs, "open the drawer")
    assert out.actions.shape == (1, K_G, D)
    assert runner.actions_to_env(out.actions[0]).shape == (K_G, D)
    with pytest.raises(RobodualError, match="unnorm_key.*'bridge_orig'.*not an OpenVLA-format folder"):
        HFVLMGeneralist.load_runner(ckpt, unnorm_key="bridge_orig")  # one line, not a TypeError


def test_lora_trains_only_adapters_and_overfits(base):
    torch.manual_seed(0)
    model = _model(base, lora=True, lora_rank=8, lora_alpha=16).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # adapters on the language model, the projector trained fully (train_projector), the vision tower frozen
    assert trainable and all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    assert all("language_model" in n for n in trainable if "lora_" in n)
    assert not any("vision_tower" in n for n in trainable)
    assert set(model.state_dict()) == trainable  # checkpoints hold the adapters and the projector only
    batch = _batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(40):
        loss, metrics = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["action_token_acc"] > 0.8


def test_action_ids_step_over_trailing_special_tokens(base):
    """LLaVA-style vocabularies end with added special tokens (<image>, <pad>): actions end below them."""
    from robodual_core.errors import RobodualError
    from robodual_generalist.hf_vlm import action_range_end

    assert action_range_end(32002, 256, {0, 1, 2, 32000, 32001}) == 32000
    assert action_range_end(1000, 256, {0, 1, 2}) == 1000
    model = _model(base)
    tok = model.action_tokenizer
    reserved = set(model.processor.tokenizer.all_special_ids) | {model.image_token_id}
    assert not reserved & set(range(tok.first_action_id - 1, tok.vocab_size))
    assert model.cfg.action_vocab == tok.vocab_size  # saved with the model's config
    with pytest.raises(RobodualError, match="would take its special tokens"):
        _model(base, separator_id=model.image_token_id)
