"""Native OpenVLA loading: a tiny checkpoint written in OpenVLA's on-disk format (config.json, sharded
safetensors with OpenVLA key names, index) loads, and its logits equal a direct computation."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from robodual_core.errors import RobodualError
from robodual_generalist.prismatic import load_openvla, save_openvla, tiny_openvla_config

VOCAB = 300


def reference_parts(cfg):
    """The OpenVLA network assembled by hand from timm, torch and transformers (no robodual code)."""
    torch.manual_seed(0)
    vits = [timm.create_model(cfg["timm_model_ids"][i], pretrained=False, num_classes=0,
                              img_size=cfg["image_sizes"][i], **cfg["timm_model_kwargs"][i]) for i in range(2)]
    for vit in vits:  # LayerScale starts at 1e-5; make it matter
        for name, p in vit.named_parameters():
            if name.endswith("gamma"):
                p.data.uniform_(0.5, 1.5)
    vdim = sum(v.embed_dim for v in vits)
    hid = cfg["text_config"]["hidden_size"]
    proj = torch.nn.ModuleDict({"fc1": torch.nn.Linear(vdim, 4 * vdim), "fc2": torch.nn.Linear(4 * vdim, hid),
                                "fc3": torch.nn.Linear(hid, hid)})
    tc = {k: v for k, v in cfg["text_config"].items() if k != "model_type"}
    llm = LlamaForCausalLM(LlamaConfig(**tc))
    return vits, proj, llm


def openvla_state(vits, proj, llm):
    state = {}
    for prefix, module in (("vision_backbone.featurizer.", vits[0]), ("vision_backbone.fused_featurizer.", vits[1]),
                           ("projector.", proj), ("language_model.", llm)):
        for k, v in module.state_dict().items():
            k = k.replace("ls1.gamma", "ls1.scale_factor").replace("ls2.gamma", "ls2.scale_factor")
            state[prefix + k] = v.contiguous()
    return state


def write_openvla_dir(path, cfg, state):
    path.mkdir()
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:]), start=1):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0},
                                                                   "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(cfg))


def reference_logits(vits, proj, llm, images, ids):
    means = [(0.485, 0.456, 0.406), (0.5, 0.5, 0.5)]
    stds = [(0.229, 0.224, 0.225), (0.5, 0.5, 0.5)]
    feats = []
    for vit, m, s in zip(vits, means, stds, strict=True):
        x = (images - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
        feats.append(vit.get_intermediate_layers(x, n={len(vit.blocks) - 2})[0])  # second-to-last block
    f = torch.cat(feats, dim=2)
    gelu = torch.nn.functional.gelu
    patches = proj["fc3"](gelu(proj["fc2"](gelu(proj["fc1"](f)))))
    emb = llm.get_input_embeddings()(ids)
    seq = torch.cat([emb[:, :1], patches, emb[:, 1:]], dim=1)  # [BOS, patches, text]
    return llm(inputs_embeds=seq).logits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = tiny_openvla_config(VOCAB, image_size=32, patch_size=8, vision_dim=16, vision_depth=3, vision_heads=2,
                              hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    parts = reference_parts(cfg)
    path = tmp_path_factory.mktemp("openvla") / "ckpt"
    write_openvla_dir(path, cfg, openvla_state(*parts))
    return path, cfg, parts


def test_loaded_logits_equal_direct_computation(checkpoint):
    path, _, parts = checkpoint
    for p in parts[0]:
        p.eval()
    vla = load_openvla(path).eval()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 32)
    ids = torch.randint(3, VOCAB, (2, 9))
    ids[:, 0] = 1
    with torch.no_grad():
        ref = reference_logits(*parts, images, ids)
        patches = vla.embed_images(images)
        emb = vla.embed_tokens(ids)
        got = vla.language_model(inputs_embeds=torch.cat([emb[:, :1], patches, emb[:, 1:]], 1)).logits
    assert got.shape == (2, 1 + 16 + 8, VOCAB)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_save_writes_the_same_format(checkpoint, tmp_path):
    path, _, _ = checkpoint
    vla = load_openvla(path)
    out = save_openvla(vla, tmp_path / "again", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    original = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(original)
    assert any(k.endswith("ls1.scale_factor") for k in index) and not any("gamma" in k for k in index)
    assert len(set(index.values())) > 1  # sharded
    again = load_openvla(out)
    for k, v in vla.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_mismatched_checkpoint_is_a_clear_error(checkpoint, tmp_path):
    path, cfg, parts = checkpoint
    state = openvla_state(*parts)
    state.pop("projector.fc3.bias")
    write_openvla_dir(tmp_path / "broken", cfg, state)
    with pytest.raises(RobodualError, match="projector.fc3.bias"):
        load_openvla(tmp_path / "broken")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(RobodualError, match="config.json"):
        load_openvla(tmp_path / "noconfig")


def test_known_timm_ids_ignore_recorded_timm_model_args(checkpoint, tmp_path):
    """timm_model_args are for ids timm does not know; for ids it knows they are ignored, as OpenVLA ignores them
    (here arguments no timm model accepts)."""
    path, cfg, parts = checkpoint
    cfg = {**cfg, "timm_model_args": [{"no_such_argument": 1}, {"embed_dim": 999}]}
    write_openvla_dir(tmp_path / "known", cfg, openvla_state(*parts))
    vla = load_openvla(tmp_path / "known")
    assert vla.vision_backbone.featurizer.embed_dim == 16


# -- a stock OpenVLA checkpoint: timm ids timm does not register, norm_stats, an unnorm_key (issue 28) -------------
STOCK_BASE_VOCAB = 384  # the tokenizer's base vocabulary; <PAD> is 384, the embedding is padded to 448 = 7 * 64
STOCK_ROWS = 448
VIT_ARGS = {"patch_size": 8, "embed_dim": 16, "depth": 3, "num_heads": 2, "mlp_ratio": 2.0, "init_values": 1e-5}
STOCK_IDS = ["vit_tiny_patch8_reg4_dinov2.robodual_unregistered", "vit_tiny_patch8_siglip_32.robodual_unregistered"]
ACTION_DIM = 7
NORM_STATS = {
    "bridge_orig": {"action": {"q01": [-0.03, -0.04, -0.03, -0.1, -0.09, -0.15, 0.0],
                               "q99": [0.028, 0.041, 0.04, 0.11, 0.09, 0.14, 1.0],
                               "mask": [True, True, True, True, True, True, False]}},
    "fractal": {"action": {"q01": [-0.2, -0.3, -0.2, -0.3, -0.2, -0.5, 0.0],
                           "q99": [0.2, 0.3, 0.2, 0.3, 0.2, 0.5, 1.0],
                           "mask": [True] * 7}},
}
INSTRUCTION = "Pick up the red block"


def stock_tokenizer(folder):
    """A word-level tokenizer saved as OpenVLA's LLaMA-2 tokenizer is: it adds BOS, knows the empty piece '▁'
    (LLaMA-2's 29871, which predict_action appends after 'Out:'), and <PAD> comes after its base vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "▁", "In", ":", "What", "action", "should", "the", "robot", "take", "to",
             "pick", "up", "red", "block", "?", "Out"]
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({f"w{i}": i for i in range(len(words), STOCK_BASE_VOCAB)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"pad_token": "<PAD>"})
    assert fast.vocab_size == STOCK_BASE_VOCAB and fast.pad_token_id == STOCK_BASE_VOCAB
    fast.save_pretrained(folder)
    return fast


def stock_config(norm_stats=NORM_STATS):
    """config.json as OpenVLA writes it: no robodual fields, no timm_model_kwargs; the ids are unknown to timm and
    rebuilt from timm_model_args."""
    cfg = tiny_openvla_config(STOCK_ROWS, image_size=32, hidden_size=32, num_layers=2, num_heads=2,
                              intermediate_size=64)
    cfg.pop("timm_model_kwargs")
    cfg.update(timm_model_ids=STOCK_IDS, timm_model_args=[VIT_ARGS, VIT_ARGS], pad_token_id=STOCK_BASE_VOCAB,
               pad_to_multiple_of=64, norm_stats=norm_stats)
    cfg["text_config"]["pad_token_id"] = STOCK_BASE_VOCAB
    return cfg


def stock_parts(cfg):
    """The network by hand (timm's VisionTransformer from the recorded arguments, torch, transformers); the LM
    head is made so that OpenVLA's unconstrained greedy choice is always an action id: the rows of the other ids
    are 0 and the action rows come in pairs +r, -r (so the best action logit is > 0 for any hidden state)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vits = [VisionTransformer(img_size=32, num_classes=0, **VIT_ARGS) for _ in range(2)]
    for vit in vits:
        for name, p in vit.named_parameters():
            if name.endswith("gamma"):
                p.data.uniform_(0.5, 1.5)
    hid = cfg["text_config"]["hidden_size"]
    proj = torch.nn.ModuleDict({"fc1": torch.nn.Linear(32, 128), "fc2": torch.nn.Linear(128, hid),
                                "fc3": torch.nn.Linear(hid, hid)})
    tc = {k: v for k, v in cfg["text_config"].items() if k != "model_type"}
    llm = LlamaForCausalLM(LlamaConfig(**tc))
    with torch.no_grad():
        w = llm.lm_head.weight
        first = STOCK_BASE_VOCAB - 256
        half = torch.randn(128, w.shape[1])
        w.zero_()
        w[first:first + 128] = half
        w[first + 128:STOCK_BASE_VOCAB] = -half
    return vits, proj, llm


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    cfg = stock_config()
    parts = stock_parts(cfg)
    path = tmp_path_factory.mktemp("stock") / "openvla-7b-like"
    write_openvla_dir(path, cfg, openvla_state(*parts))
    tok = stock_tokenizer(path)
    return path, parts, tok


def openvla_predict_action(parts, tok, image, instruction, unnorm_key):
    """OpenVLA's predict_action, from its documented algorithm: the prompt (+ the empty piece after 'Out:'),
    unconstrained greedy decoding of action_dim tokens, the token ids back to bin centres (float64), and the
    mask-aware unnormalization with norm_stats[unnorm_key]. No robodual code."""
    import numpy as np

    vits, proj, llm = parts
    stats = NORM_STATS[unnorm_key]["action"]
    dim = len(stats["q01"])
    prompt = f"In: What action should the robot take to {instruction.lower()}?\nOut:"
    ids = tok(prompt).input_ids
    empty = tok.convert_tokens_to_ids("▁")
    if ids[-1] != empty:
        ids = ids + [empty]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    means, stds = [(0.485, 0.456, 0.406), (0.5, 0.5, 0.5)], [(0.229, 0.224, 0.225), (0.5, 0.5, 0.5)]
    feats = []
    for vit, m, s in zip(vits, means, stds, strict=True):
        xi = (x - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
        feats.append(vit.get_intermediate_layers(xi, n={len(vit.blocks) - 2})[0])
    gelu = torch.nn.functional.gelu
    patches = proj["fc3"](gelu(proj["fc2"](gelu(proj["fc1"](torch.cat(feats, dim=2))))))
    emb = llm.get_input_embeddings()
    text = emb(torch.tensor([ids]))
    seq = torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)
    generated = []
    with torch.no_grad():
        for _ in range(dim):
            nxt = int(llm(inputs_embeds=seq).logits[0, -1].argmax())
            generated.append(nxt)
            seq = torch.cat([seq, emb(torch.tensor([[nxt]]))], dim=1)
    vocab_size = STOCK_ROWS - 64  # OpenVLA: text_config.vocab_size - pad_to_multiple_of
    bins = np.linspace(-1, 1, 256)
    bin_centers = (bins[:-1] + bins[1:]) / 2.0
    discretized = vocab_size - np.array(generated)
    normalized = bin_centers[np.clip(discretized - 1, a_min=0, a_max=bin_centers.shape[0] - 1)]
    mask = np.asarray(stats.get("mask", np.ones_like(stats["q01"], dtype=bool)))
    high, low = np.array(stats["q99"]), np.array(stats["q01"])
    return np.where(mask, 0.5 * (normalized + 1) * (high - low) + low, normalized), generated, normalized


def stock_image(seed=0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_unregistered_timm_ids_rebuild_from_timm_model_args(stock):
    path, parts, _ = stock
    import timm

    assert not any(timm.is_model(i.split(".")[0]) for i in STOCK_IDS)
    vla = load_openvla(path).eval()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 32)
    ids = torch.randint(3, 300, (2, 9))
    ids[:, 0] = 1
    with torch.no_grad():
        for v in parts[0]:
            v.eval()
        ref = reference_logits(*parts, images, ids)
        patches = vla.embed_images(images)
        emb = vla.embed_tokens(ids)
        got = vla.language_model(inputs_embeds=torch.cat([emb[:, :1], patches, emb[:, 1:]], 1)).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_unregistered_timm_id_without_arguments_is_one_line(stock, tmp_path):
    path, parts, _ = stock
    cfg = json.loads((path / "config.json").read_text())
    cfg["timm_model_args"] = [VIT_ARGS, None]
    write_openvla_dir(tmp_path / "noargs", cfg, openvla_state(*parts))
    with pytest.raises(RobodualError) as err:
        load_openvla(tmp_path / "noargs")
    msg = str(err.value)
    assert "\n" not in msg and STOCK_IDS[1] in msg and "timm_model_args[1]" in msg
    cfg["timm_model_args"] = [VIT_ARGS, {**VIT_ARGS, "no_such_argument": 3}]
    write_openvla_dir(tmp_path / "badargs", cfg, openvla_state(*parts))
    with pytest.raises(RobodualError, match=r"timm_model_args\[1\].*no_such_argument"):
        load_openvla(tmp_path / "badargs")


@pytest.mark.parametrize("unnorm_key", ["bridge_orig", "fractal"])
def test_stock_openvla_policy_equals_predict_action(stock, unnorm_key):
    """A generalist-only policy of a stock OpenVLA checkpoint gives OpenVLA's predict_action numbers exactly:
    float64 bin centres, q01/q99 of norm_stats[unnorm_key], the masked gripper left normalized."""
    import numpy as np

    from robodual_core.runtime import AggregationConfig, GeneralistOnlyPolicy, load_runner

    path, parts, tok = stock
    runner = load_runner("generalist", path, unnorm_key=unnorm_key)
    assert runner.k_g == 1 and runner.action_dim == ACTION_DIM
    for seed in range(3):
        image = stock_image(seed)
        want, generated, normalized = openvla_predict_action(parts, tok, image, INSTRUCTION, unnorm_key)
        assert all(STOCK_BASE_VOCAB - 256 <= t < STOCK_BASE_VOCAB for t in generated)  # the decoding agrees
        out = runner.predict({"rgb_static": image}, INSTRUCTION)
        got = runner.actions_to_env(out.actions[0])
        assert got.shape == (1, ACTION_DIM) and got.dtype == np.float64
        assert np.array_equal(got[0], want), (got[0], want)
        stats = NORM_STATS[unnorm_key]["action"]
        unmasked = 0.5 * (normalized + 1) * (np.array(stats["q99"]) - np.array(stats["q01"])) + np.array(stats["q01"])
        if not all(stats["mask"]):  # the gripper stays in normalized units (unnormalized it would differ)
            assert got[0, -1] == normalized[-1] != unmasked[-1]
        policy = GeneralistOnlyPolicy(runner, aggregation=AggregationConfig(enabled=False, binarize_gripper=False))
        policy.reset()
        assert np.array_equal(policy.step({"rgb_static": image}, INSTRUCTION), want.astype(np.float32))


def test_float32_bin_centres_would_not_be_exact():
    """The float64 centres matter: OpenVLA's centres and their float32 roundings differ (up to ~2e-8)."""
    import numpy as np

    from robodual_generalist.tokenizer import ActionTokenizer

    t = ActionTokenizer(vocab_size=400, separator_id=0, action_dim=1, k_g=1)
    f32 = t.bin_centers.numpy()
    assert not np.array_equal(f32.astype(np.float64), t.bin_centers_f64)
    assert np.array_equal(t.exact_centres(f32), t.bin_centers_f64)
    assert t.exact_centres(np.array([0.123], np.float32))[0] == np.float64(np.float32(0.123))  # not a centre: kept


def test_unnorm_key_errors_are_one_line(stock, tmp_path):
    from robodual_core.runtime import load_runner

    path, parts, tok = stock
    with pytest.raises(RobodualError) as err:
        load_runner("generalist", path)
    msg = str(err.value)
    assert "\n" not in msg and "2 datasets" in msg and "bridge_orig, fractal" in msg and "--unnorm-key" in msg
    with pytest.raises(RobodualError) as err:
        load_runner("generalist", path, unnorm_key="libero")
    msg = str(err.value)
    assert "\n" not in msg and "'libero'" in msg and "bridge_orig, fractal" in msg
    # one dataset: the key may be left out (OpenVLA's rule)
    one = tmp_path / "one"
    write_openvla_dir(one, stock_config({"bridge_orig": NORM_STATS["bridge_orig"]}), openvla_state(*parts))
    tok.save_pretrained(one)
    runner = load_runner("generalist", one)
    assert runner.normalizer.mask("action").tolist() == NORM_STATS["bridge_orig"]["action"]["mask"]


@pytest.mark.hostile
def test_checkpoint_without_tokenizer_is_one_line(stock, tmp_path, run, caplog):
    """No tokenizer files: one line naming the folder and the files, and nothing from transformers."""
    from generalist_helpers import make_store

    from robodual_generalist.model import VLAGeneralist

    path, parts, _ = stock
    bare = tmp_path / "no-tokenizer"
    write_openvla_dir(bare, stock_config(), openvla_state(*parts))
    with pytest.raises(RobodualError) as err:
        VLAGeneralist.from_checkpoint(bare, unnorm_key="bridge_orig")
    msg = str(err.value)
    assert "\n" not in msg and str(bare) in msg and "tokenizer.json" in msg and "tokenizer.model" in msg
    store = make_store(tmp_path / "store.zarr", episodes=1, steps=4)
    code, cap = run("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--base", bare,
                    "--steps", 1)
    assert code != 0
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bare) in lines[0], cap.err
    assert "tokenizer.json" in lines[0]
    assert not [r for r in caplog.records if r.name.startswith("transformers")]


def test_normalizer_mask_numpy_torch_and_json():
    """The q99 normalizer with OpenVLA's mask: masked dimensions pass through both ways; the mask survives
    to_dict/from_dict; float64 statistics give float64 arithmetic."""
    import numpy as np

    from robodual_core.data import Normalizer

    stats = {"action": {"q01": [0.0, -1.0, 0.0], "q99": [2.0, 1.0, 1.0], "mask": [True, True, False]}}
    norm = Normalizer.from_stats(stats, {"action": "q99"}, dtype=np.float64)
    a = np.array([[0.5, 0.25, 0.853]])
    back = norm.unnormalize("action", a)
    assert np.array_equal(back, np.where([True, True, False], 0.5 * (a + 1) * np.array([2.0, 2.0, 1.0])
                                         + np.array([0.0, -1.0, 0.0]), a))
    assert back[0, 2] == 0.853  # the gripper stays as it was
    assert np.allclose(norm.normalize("action", back), a)
    t = torch.tensor(a)
    assert torch.equal(norm.unnormalize("action", t), torch.from_numpy(back))
    again = Normalizer.from_dict(norm.to_dict())
    assert again.to_dict()["action"]["mask"] == [True, True, False]
    assert np.array_equal(again.unnormalize("action", a), back)
    assert Normalizer.from_stats({"action": {k: v for k, v in stats["action"].items() if k != "mask"}},
                                 {"action": "q99"}).mask("action") is None
    with pytest.raises(RobodualError, match="'mask' has shape"):
        Normalizer.from_stats({"action": {**stats["action"], "mask": [True]}}, {"action": "q99"})


def test_load_policy_takes_a_stock_folder_and_its_unnorm_key(stock):
    """Where a user picks a policy (load_policy: eval offline, serve): a stock OpenVLA folder is a generalist-only
    policy, its unnorm_key chosen there."""
    import numpy as np

    from robodual_core.runtime import AggregationConfig, GeneralistOnlyPolicy, load_policy

    path, parts, tok = stock
    image = stock_image(5)
    want, _, _ = openvla_predict_action(parts, tok, image, INSTRUCTION, "bridge_orig")
    policy = load_policy(path, unnorm_key="bridge_orig")  # by default the actions as predicted (not thresholded)
    assert isinstance(policy, GeneralistOnlyPolicy)
    policy.reset()
    assert np.array_equal(policy.step({"rgb_static": image}, INSTRUCTION), want.astype(np.float32))
    policy = load_policy(path, unnorm_key="bridge_orig", aggregation=AggregationConfig(enabled=False))
    policy.reset()
    assert policy.step({"rgb_static": image}, INSTRUCTION)[-1] == (1.0 if want[-1] > 0 else -1.0) != want[-1]
    with pytest.raises(RobodualError, match="2 datasets.*bridge_orig, fractal"):
        load_policy(path)
    with pytest.raises(RobodualError, match="generalist model folder; it cannot make a 'dual' policy"):
        load_policy(path, kind="dual", unnorm_key="fractal")


@pytest.mark.slow
def test_eval_offline_and_serve_take_unnorm_key(stock, tmp_path, run):
    from generalist_helpers import make_store

    path, _, _ = stock
    store = make_store(tmp_path / "store.zarr", episodes=2, steps=3, action_dim=ACTION_DIM)
    code, cap = run("eval", "offline", "--policy", path, "--dataset", store, "--split", "all", "--max-episodes", 1,
                    "--unnorm-key", "fractal", "--out", tmp_path / "eval", "--json")
    assert code == 0, cap.err
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["steps"] == 3 and len(result["l1_per_dim"]) == ACTION_DIM
    code, cap = run("eval", "offline", "--policy", path, "--dataset", store, "--split", "all", "--unnorm-key",
                    "libero", "--out", tmp_path / "eval2")
    errors = [line for line in cap.err.splitlines() if line.strip()]
    assert code != 0 and len(errors) == 1 and "'libero'" in errors[0] and "bridge_orig, fractal" in errors[0]
    code, cap = run("serve", "--help")
    assert code == 0 and "--unnorm-key" in cap.out


def test_image_normalization_comes_from_preprocessor_config(stock, tmp_path):
    """OpenVLA normalizes each backbone's input with the means/stds its preprocessor_config.json records (an id
    timm does not know has no defaults): the loaded model does too."""
    path, parts, _ = stock
    folder = tmp_path / "with-processor"
    write_openvla_dir(folder, json.loads((path / "config.json").read_text()), openvla_state(*parts))
    means, stds = [[0.3, 0.4, 0.5], [0.6, 0.5, 0.4]], [[0.2, 0.25, 0.3], [0.35, 0.4, 0.45]]
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "PrismaticImageProcessor", "image_resize_strategy": "resize-naive",
         "input_sizes": [[3, 32, 32], [3, 32, 32]], "means": means, "stds": stds}))
    vla = load_openvla(folder).eval()
    vits, proj, _ = parts
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    feats = []
    with torch.no_grad():
        for vit, m, s in zip(vits, means, stds, strict=True):
            vit.eval()
            x = (images - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
            feats.append(vit.get_intermediate_layers(x, n={len(vit.blocks) - 2})[0])
        gelu = torch.nn.functional.gelu
        want = proj["fc3"](gelu(proj["fc2"](gelu(proj["fc1"](torch.cat(feats, dim=2))))))
        torch.testing.assert_close(vla.embed_images(images), want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(load_openvla(path).eval().embed_images(images), want, atol=1e-3)
    (folder / "preprocessor_config.json").write_text(json.dumps({"means": [[0.5, 0.5, 0.5]], "stds": stds}))
    with pytest.raises(RobodualError, match="preprocessor_config.json' means/stds"):
        load_openvla(folder)
