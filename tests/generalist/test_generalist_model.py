"""Generalist model: training signal, free-running constrained decoding, batching, KV cache, LoRA merge."""

import json

import torch
from generalist_helpers import batch_of, make_store, tiny_cfg

from robodual_core.data import WindowDataset
from robodual_core.training import Trainer, TrainerConfig
from robodual_generalist.model import VLAGeneralist


def model(**kw):
    torch.manual_seed(0)
    return VLAGeneralist(tiny_cfg(**kw), action_dim=3).eval()


def test_constrained_decoding_always_gives_valid_actions():
    m = model()
    tok = m.action_tokenizer
    # bias the head hard towards a text byte: unconstrained argmax would never pick an action id
    with torch.no_grad():
        m.vla.language_model.lm_head.weight[ord("a") + 3] += 50.0
    out = m.generate(batch_of(3))
    assert out.actions.shape == (3, 4, 3)
    assert out.actions.abs().max() < 1
    centres = tok.bin_centers
    assert torch.isin(out.actions, centres).all()
    assert out.action_latents.shape == (3, 4 * 3, 64) and out.action_mask.all()
    assert out.task_latents.shape[0] == 3 and out.task_mask.shape == out.task_latents.shape[:2]


def test_batch_decoding_equals_one_by_one_and_kv_cache_equals_recompute():
    m = model()
    batch = batch_of(3)
    full = m.generate(batch)
    nocache = m.generate(batch, use_cache=False)
    assert torch.equal(full.actions, nocache.actions)
    torch.testing.assert_close(full.action_latents, nocache.action_latents, rtol=1e-4, atol=1e-5)
    assert len(set(full.task_mask.sum(1).tolist())) == 3  # prompts of different lengths: padding is exercised
    for i in range(3):
        one = m.generate({"obs": {"rgb_static": batch["obs"]["rgb_static"][i:i + 1]},
                          "instruction": [batch["instruction"][i]]})
        n = int(one.task_mask.sum())
        assert int(full.task_mask[i].sum()) == n
        assert torch.equal(full.actions[i], one.actions[0])
        torch.testing.assert_close(full.task_latents[i, :n], one.task_latents[0, :n], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(full.action_latents[i], one.action_latents[0], rtol=1e-4, atol=1e-5)
        assert (full.task_latents[i, n:] == 0).all()


def test_latents_come_from_free_running_decoding_not_the_labels():
    m = model()
    batch = batch_of(2)
    a = m.generate(batch)
    batch["action"] = -batch["action"]
    b = m.generate(batch)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.action_latents, b.action_latents)


def test_tiny_model_overfits_a_tiny_dataset(tmp_path):
    store = make_store(tmp_path / "s.zarr", episodes=3, steps=6, action_dim=3)
    ds = WindowDataset(store, obs_keys=["rgb_static"], horizon=4, k_g=4, split="all", augment_tau=False,
                       normalization={"action": "q99"})
    torch.manual_seed(0)
    m = VLAGeneralist(tiny_cfg(), action_dim=3)
    cfg = TrainerConfig(steps=60, batch_size=6, num_workers=0, lr=3e-3, weight_decay=0.0, warmup_steps=5,
                        ema=False, ckpt_every=1000, log_every=10)
    Trainer(m, ds, cfg, tmp_path / "run", show_progress=False).fit()
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logs[-1]["loss"] < 0.3 * logs[0]["loss"]
    assert logs[-1]["action_token_acc"] > 0.9
    # free-running decoding reproduces the (discretized) training chunks
    m.eval()
    samples = [ds[i] for i in range(0, len(ds), 3)]
    batch = {"obs": {"rgb_static": torch.stack([s["obs"]["rgb_static"] for s in samples])},
             "instruction": [s["instruction"] for s in samples]}
    out = m.generate(batch)
    target = m.action_tokenizer.discretize(torch.stack([s["action"] for s in samples]))
    assert (out.actions == target).float().mean() > 0.8


def test_lora_merge_gives_the_same_outputs(tmp_path):
    from robodual_generalist.model import build_base
    from robodual_generalist.prismatic import save_openvla

    vla, _, _ = build_base(tiny_cfg())
    config = dict(vla.config)
    base = save_openvla(vla, tmp_path / "base", config=config)
    m = VLAGeneralist(tiny_cfg(base=str(base), lora=True, lora_rank=4, lora_alpha=8, freeze_vision=True), action_dim=3).eval()
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("vla.projector") for n in names)
    assert set(m.state_dict()) == set(names)  # checkpoints hold the adapter (+ projector) only
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = batch_of(2)
    before = m.generate(batch)
    loss_before, _ = m.loss(batch)
    m.merge_lora()
    assert not any("lora_" in n for n, _ in m.vla.named_parameters())
    after = m.generate(batch)
    loss_after, _ = m.loss(batch)
    assert torch.equal(before.actions, after.actions)
    torch.testing.assert_close(before.action_latents, after.action_latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_before, loss_after, rtol=1e-4, atol=1e-5)


def test_tiny_checkpoint_from_before_the_word_tokenizer_loads_with_bytes(tmp_path):
    """A tiny run saved before ``tiny.tokenizer`` existed has no such key: it was trained on bytes, and the
    new default ('words') must not be applied to it (the vocabulary, and so the weights, differ)."""
    from robodual_core.checkpoint import resolve_checkpoint
    from robodual_generalist.config import TinyConfig
    from robodual_generalist.tokenizer import ByteTokenizer, WordTokenizer

    store = make_store(tmp_path / "s.zarr", episodes=2, steps=6, action_dim=3)
    ds = WindowDataset(store, obs_keys=["rgb_static"], horizon=4, k_g=4, split="all", augment_tau=False,
                       normalization={"action": "q99"})
    tiny = dict(image_size=32, patch_size=16, vision_dim=16, vision_depth=2, vision_heads=2, hidden_size=64,
                num_layers=2, num_heads=2, intermediate_size=128)
    for name in ("bytes", "words"):
        torch.manual_seed(0)
        m = VLAGeneralist(tiny_cfg(tiny=TinyConfig(**tiny, tokenizer=name)), action_dim=3)
        Trainer(m, ds, TrainerConfig(steps=1, batch_size=4, num_workers=0, ema=False, ckpt_every=1),
                tmp_path / name, show_progress=False).fit()
    meta_file = resolve_checkpoint(tmp_path / "bytes") / "model_config.json"
    meta = json.loads(meta_file.read_text())
    del meta["model"]["tiny"]["tokenizer"]  # as the older version wrote it
    meta_file.write_text(json.dumps(meta))
    old, new = VLAGeneralist.from_checkpoint(tmp_path / "bytes"), VLAGeneralist.from_checkpoint(tmp_path / "words")
    assert isinstance(old.text_tokenizer, ByteTokenizer) and isinstance(new.text_tokenizer, WordTokenizer)
    batch = batch_of(2)
    assert old.generate(batch).task_latents.shape[1] > 2 * new.generate(batch).task_latents.shape[1]


def test_resumed_tiny_run_keeps_the_tokenizer_it_was_started_with(tmp_path):
    from robodual_generalist.commands import resolve_train_config

    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"model": {"base": "tiny", "tiny": {"hidden_size": 64}}}))  # before tiny.tokenizer
    assert resolve_train_config(None, [], None, None, saved=saved).model.tiny.tokenizer == "bytes"
    assert resolve_train_config(None, [], "tiny", None).model.tiny.tokenizer == "words"  # a new run


def test_latent_layer_is_checked_when_the_model_is_built():
    import dataclasses

    import pytest

    from robodual_core.errors import RobodualError

    cfg = tiny_cfg()
    layers = cfg.tiny.num_layers
    for ok in (0, -1, layers, -(layers + 1)):
        VLAGeneralist(dataclasses.replace(cfg, latent_layer=ok), action_dim=3)
    for bad in (layers + 1, -(layers + 2)):
        with pytest.raises(RobodualError, match=r"'model.latent_layer' is .*expected"):
            VLAGeneralist(dataclasses.replace(cfg, latent_layer=bad), action_dim=3)


def test_cache_refuses_to_cut_task_tokens():
    import pytest

    from robodual_core.errors import RobodualError
    from robodual_generalist.caching import _pad_tokens

    x = torch.ones(2, 3, 4)
    assert _pad_tokens(x, 5).shape == (2, 5, 4) and _pad_tokens(x, 3) is x
    with pytest.raises(RobodualError, match="gave 3 task tokens at steps 0-1, more than the 2"):
        _pad_tokens(x, 2, " at steps 0-1")


def test_model_folder_hash_covers_every_file(tmp_path):
    """An unsharded model folder (a small merged VLM) hashes config, weights, tokenizer and processor files."""
    from safetensors.torch import save_file

    from robodual_core.data.generalist_cache import checkpoint_hash

    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text("{}")
    first = checkpoint_hash(folder)
    (folder / "tokenizer.json").write_text('{"changed": 1}')
    assert checkpoint_hash(folder) != first


def test_static_dynamic_and_recompute_decoding_agree_batched_and_one_by_one():
    """The static-cache decoder (issue 20: fixed buffers, selection on the device) against the growing cache and
    the no-cache recompute, at batch 3 with prompts of different lengths and one by one; a reused decoder (second
    call, other prompts) gives the same as a fresh one."""
    m = model()
    batch = batch_of(3)
    outs = {mode: m.generate(batch, decoding=mode) for mode in ("static", "dynamic", "recompute")}
    ref = outs["dynamic"]
    for mode in ("static", "recompute"):
        assert torch.equal(outs[mode].actions, ref.actions), mode
        torch.testing.assert_close(outs[mode].action_latents, ref.action_latents, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(outs[mode].task_latents, ref.task_latents, rtol=1e-4, atol=1e-5)
    assert len({tuple(r.tolist()) for r in ref.actions.flatten(1)}) > 1  # the rows decode differently
    for i in range(3):
        one = {"obs": {"rgb_static": batch["obs"]["rgb_static"][i:i + 1]}, "instruction": [batch["instruction"][i]]}
        a, b = m.generate(one, decoding="static"), m.generate(one, decoding="dynamic")
        assert torch.equal(a.actions, b.actions) and torch.equal(a.actions[0], ref.actions[i])
        torch.testing.assert_close(a.action_latents, b.action_latents, rtol=1e-4, atol=1e-5)
    again = m.generate(batch, decoding="static")  # the pooled decoder, reset and reused
    assert torch.equal(again.actions, outs["static"].actions)
    torch.testing.assert_close(again.action_latents, outs["static"].action_latents, rtol=0, atol=0)


def test_static_decoding_selects_on_the_device_without_a_host_sync():
    """No ``.item()``/``bool(tensor)`` per token: the step runs with CUDA-sync debug errors on... on the CPU there is
    no sync to catch, so check the step's selection is pure tensor ops: it takes a device slot counter."""
    from robodual_generalist.decoding import StaticChunkDecoder

    m = model()
    tok = m.action_tokenizer
    dec = StaticChunkDecoder(m.vla.language_model, m.vla.embed_tokens, tok, -1, 2, 64, torch.device("cpu"),
                             torch.float32, graph=False)
    logits = torch.randn(2, m.vla.language_model.config.vocab_size)
    for slot in range(tok.chunk_len):
        got = dec.select(logits, torch.tensor(slot))
        assert torch.equal(got, tok.constrained_next(logits, slot))


def test_unknown_decoding_mode_is_refused():
    import pytest

    from robodual_core.errors import RobodualError

    with pytest.raises(RobodualError, match="decoding"):
        model().generate(batch_of(1), decoding="beam")
