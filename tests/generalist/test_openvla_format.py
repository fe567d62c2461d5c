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
