"""Native Prismatic / OpenVLA: fused DINOv2 + SigLIP (timm), MLP projector, LLaMA (transformers).

Reads and writes OpenVLA-format checkpoint folders without ``trust_remote_code``: ``config.json`` (the
fields of OpenVLA's ``OpenVLAConfig``), sharded ``model-0000i-of-0000n.safetensors`` and
``model.safetensors.index.json``, with OpenVLA's key names::

    vision_backbone.featurizer.*          timm ViT (DINOv2); LayerScale weights named ``scale_factor``
    vision_backbone.fused_featurizer.*    timm ViT (SigLIP)
    projector.fc1 / fc2 / fc3             fused GELU MLP
    language_model.model.* / lm_head.*    LlamaForCausalLM

OpenVLA renames timm's LayerScale ``gamma`` to ``scale_factor`` (old transformers rewrote any key named
``gamma``); here the modules stay stock timm and the rename happens when reading and writing files.
Features are the patch tokens of the second-to-last ViT block, as OpenVLA's ``get_intermediate_layers``
monkey-patch returns.

Backbones are built as OpenVLA builds them: ``timm.create_model(timm_model_ids[i], pretrained=False,
num_classes=0, img_size=image_sizes[i], act_layer=timm_override_act_layers[i])``. An id that the installed
timm does not register (a newer timm's model, a custom one, an unknown pretrained tag) is rebuilt from the
keyword arguments the checkpoint records for it in ``timm_model_args[i]`` (a timm ``VisionTransformer``; a
dict keyed by id is read too); for ids timm knows those arguments are ignored, as OpenVLA ignores them.
Extension fields (tiny configurations): ``timm_model_kwargs`` (per-backbone overrides of the timm
architecture, applied to every id) and ``image_means`` / ``image_stds``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robodual_core.errors import RobodualError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
INDEX_FILE = "model.safetensors.index.json"
REQUIRED_FIELDS = ("timm_model_ids", "image_sizes", "text_config")


def _default_norm(timm_id: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if "siglip" in timm_id:
        return SIGLIP_MEAN, SIGLIP_STD
    if "clip" in timm_id:
        return CLIP_MEAN, CLIP_STD
    return IMAGENET_MEAN, IMAGENET_STD


def _per_backbone(cfg: dict[str, Any], field: str, ids: list[str], default: Any) -> list[Any]:
    """``cfg[field]`` as one entry per backbone: a list (None entries allowed), or a dict keyed by timm id."""
    value = cfg.get(field)
    if value is None:
        return [default] * len(ids)
    if isinstance(value, dict):
        return [value.get(i, default) for i in ids]
    if not isinstance(value, list | tuple) or len(value) != len(ids):
        raise RobodualError(f"config.json '{field}' is {json.dumps(value)[:80]}; expected a list of {len(ids)} "
                            "entries (one per timm_model_ids entry) or an object keyed by timm id")
    return [default if v is None else v for v in value]


def timm_knows(timm_id: str) -> bool:
    """Whether the installed timm builds ``timm_id`` (its architecture registered, its pretrained tag known)."""
    import timm

    if not timm.is_model(timm_id):
        return False
    return "." not in timm_id or timm_id in timm.list_pretrained(timm_id)


def build_timm_vit(timm_id: str, img_size: int, act_layer: str | None, args: dict[str, Any] | None,
                   overrides: dict[str, Any], field: str) -> nn.Module:
    """One OpenVLA vision backbone: timm's own model for an id it knows (``args`` ignored), otherwise a timm
    ``VisionTransformer`` from the checkpoint's recorded keyword arguments ``args`` (``field`` names them)."""
    import timm

    extra = {"act_layer": act_layer} if act_layer else {}
    if timm_knows(timm_id):
        return timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=img_size, **extra, **overrides)
    arch = timm_id.split(".", 1)[0]
    if not args:
        if "." in timm_id and timm.is_model(arch):  # an unknown pretrained tag: the architecture is timm's
            return timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size, **extra, **overrides)
        raise RobodualError(f"config.json timm_model_ids entry '{timm_id}' is not a model of the installed timm "
                            f"({timm.__version__}) and {field} records no keyword arguments to rebuild it from")
    if not isinstance(args, dict):
        raise RobodualError(f"config.json {field} is {json.dumps(args)[:80]}; expected an object of timm "
                            "VisionTransformer keyword arguments")
    from timm.models.vision_transformer import VisionTransformer

    kwargs = {k: v for k, v in args.items() if k not in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay")}
    kwargs.update(img_size=img_size, num_classes=0, **extra, **overrides)
    try:
        return VisionTransformer(**kwargs)
    except TypeError as exc:
        raise RobodualError(f"config.json {field} cannot build a timm VisionTransformer for '{timm_id}': "
                            f"{' '.join(str(exc).split())}") from None


class VisionBackbone(nn.Module):
    """One or two timm ViTs; patch features of each are concatenated along channels ``[B, P, C1 + C2]``."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        ids = list(cfg["timm_model_ids"])
        acts = _per_backbone(cfg, "timm_override_act_layers", ids, None)
        kwargs = _per_backbone(cfg, "timm_model_kwargs", ids, {})
        args = _per_backbone(cfg, "timm_model_args", ids, None)
        sizes = list(cfg["image_sizes"])
        self.fused = bool(cfg.get("use_fused_vision_backbone", len(ids) == 2))
        if len(ids) != (2 if self.fused else 1):
            raise RobodualError(f"config timm_model_ids has {len(ids)} entries; expected "
                                f"{2 if self.fused else 1} (use_fused_vision_backbone={self.fused})")
        if len(sizes) != len(ids):
            raise RobodualError(f"config.json image_sizes has {len(sizes)} entries; expected {len(ids)} (one per "
                                "timm_model_ids entry)")

        def make(i: int) -> nn.Module:
            return build_timm_vit(ids[i], int(sizes[i]), acts[i], args[i], dict(kwargs[i]), f"timm_model_args[{i}]")

        self.featurizer = make(0)
        self.embed_dim = self.featurizer.embed_dim
        if self.fused:
            self.fused_featurizer = make(1)
            self.embed_dim += self.fused_featurizer.embed_dim
        self.image_sizes = sizes
        means = cfg.get("image_means") or [_default_norm(i)[0] for i in ids]
        stds = cfg.get("image_stds") or [_default_norm(i)[1] for i in ids]
        for i, (m, s) in enumerate(zip(means, stds, strict=True)):
            self.register_buffer(f"mean{i}", torch.tensor(m).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(s).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _features(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
        depth = len(vit.blocks)
        if depth < 2:
            raise RobodualError(f"vision backbone has {depth} block(s); OpenVLA takes the second-to-last, so >= 2")
        return vit.get_intermediate_layers(x, n={depth - 2})[0]

    def _prep(self, images: torch.Tensor, i: int) -> torch.Tensor:
        size = self.image_sizes[i]
        x = images
        if tuple(x.shape[-2:]) != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return ((x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")).to(self.featurizer.patch_embed.proj.weight.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` RGB in [0, 1] -> patch features ``[B, P, embed_dim]``."""
        feats = self._features(self.featurizer, self._prep(images, 0))
        if self.fused:
            feats = torch.cat([feats, self._features(self.fused_featurizer, self._prep(images, 1))], dim=2)
        return feats


class Projector(nn.Module):
    """OpenVLA's ``gelu-mlp`` (single backbone) or ``fused-gelu-mlp`` projector."""

    def __init__(self, fused: bool, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(nn.functional.gelu(self.fc1(x)))
        return self.fc3(nn.functional.gelu(x)) if self.fused else x


def build_language_model(text_config: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    tc = dict(text_config)
    model_type = tc.pop("model_type", "llama")
    for k in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        tc.pop(k, None)
    config = AutoConfig.for_model(model_type, **tc)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


class PrismaticVLA(nn.Module):
    """The OpenVLA network: ``vision_backbone``, ``projector``, ``language_model`` (OpenVLA key names)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        missing = [k for k in REQUIRED_FIELDS if k not in config]
        if missing:
            raise RobodualError(f"OpenVLA config is missing field(s) {', '.join(missing)}; "
                                "expected an OpenVLA-format config.json")
        self.config = dict(config)
        self.vision_backbone = VisionBackbone(config)
        llm_dim = int(config["text_config"]["hidden_size"])
        self.projector = Projector(self.vision_backbone.fused, self.vision_backbone.embed_dim, llm_dim)
        self.language_model = build_language_model(config["text_config"])
        self.hidden_size = llm_dim

    @property
    def num_patches(self) -> int:
        vit = self.vision_backbone.featurizer
        return int(vit.patch_embed.num_patches)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> projected patch embeddings ``[B, P, hidden]``."""
        return self.projector(self.vision_backbone(images))

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)


# -- OpenVLA-format files -------------------------------------------------------------------------
def _to_file_key(key: str) -> str:
    return key.replace(".ls1.gamma", ".ls1.scale_factor").replace(".ls2.gamma", ".ls2.scale_factor")


def _from_file_key(key: str) -> str:
    return key.replace(".ls1.scale_factor", ".ls1.gamma").replace(".ls2.scale_factor", ".ls2.gamma")


def is_openvla_dir(path: str | Path) -> bool:
    path = Path(path)
    if not (path / "config.json").is_file():
        return False
    try:
        cfg = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError:
        return False
    return all(k in cfg for k in REQUIRED_FIELDS)


def read_openvla_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / "config.json"
    try:
        cfg = json.loads(file.read_text())
    except FileNotFoundError:
        raise RobodualError(f"'{path}' has no config.json; expected an OpenVLA-format checkpoint folder "
                            "(config.json + model*.safetensors)") from None
    except json.JSONDecodeError as exc:
        raise RobodualError(f"'{file}' is not valid JSON: {exc}") from None
    missing = [k for k in REQUIRED_FIELDS if k not in cfg]
    if missing:
        raise RobodualError(f"'{file}' lacks {', '.join(missing)}; expected an OpenVLA (Prismatic) config")
    return cfg


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of an OpenVLA-format folder, in index order."""
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise RobodualError(f"'{index}' names shard(s) that do not exist: {', '.join(missing)}")
        return [path / n for n in names]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise RobodualError(f"'{path}' has neither {INDEX_FILE} nor model.safetensors")


def load_openvla_state(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        for k, v in load_file(str(f)).items():
            state[_from_file_key(k)] = v
    return state


def image_norms(path: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """``image_means`` / ``image_stds`` from the folder's ``preprocessor_config.json`` (OpenVLA's
    PrismaticImageProcessor records each backbone's ``means`` and ``stds``) when config.json names none: an id
    timm does not know has no defaults to look up, and the recorded ones are what OpenVLA normalizes with."""
    file = Path(path) / "preprocessor_config.json"
    if "image_means" in cfg or not file.is_file():
        return {}
    try:
        proc = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise RobodualError(f"'{file}' is not valid JSON: {exc}") from None
    means, stds = proc.get("means"), proc.get("stds")
    n = len(cfg["timm_model_ids"])
    if means is None or stds is None:
        return {}
    ok = all(isinstance(v, list) and len(v) == n and all(isinstance(c, list) and len(c) == 3 for c in v)
             for v in (means, stds))
    if not ok:
        raise RobodualError(f"'{file}' means/stds are {json.dumps(means)[:60]} / {json.dumps(stds)[:60]}; expected "
                            f"{n} lists of 3 channel values each (one per vision backbone)")
    return {"image_means": means, "image_stds": stds}


def load_openvla(path: str | Path, dtype: torch.dtype = torch.float32) -> PrismaticVLA:
    """Build the network from ``path/config.json`` (image normalization from ``preprocessor_config.json`` when
    it records it) and load its safetensors (strictly)."""
    cfg = read_openvla_config(path)
    cfg.update(image_norms(path, cfg))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: a 7B model never exists in float32
    try:
        model = PrismaticVLA(cfg)
    finally:
        torch.set_default_dtype(previous)
    state = load_openvla_state(path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RobodualError(
            f"checkpoint '{path}' does not match its config.json: missing {result.missing_keys[:5]}"
            f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''}")
    return model.to(dtype)


def save_openvla(model: PrismaticVLA, path: str | Path, config: dict[str, Any] | None = None,
                 max_shard_bytes: int = 4 << 30, extra_files: dict[str, str] | None = None,
                 copy_files: list[Path] | None = None) -> Path:
    """Write ``model`` as an OpenVLA-format folder, atomically: ``extra_files`` (name -> text) and ``copy_files``
    (e.g. the base's tokenizer files) are in it when it appears, never added after."""
    from safetensors.torch import save_file

    from robodual_core.io import atomic_dir

    state = {_to_file_key(k): v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    cfg = dict(config or model.config)
    cfg.setdefault("torch_dtype", str(next(model.parameters()).dtype).replace("torch.", ""))
    path = Path(path)
    with atomic_dir(path, overwrite=True) as tmp:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in state.values())
        (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                 indent=2))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        for src in copy_files or []:
            shutil.copy2(src, tmp / Path(src).name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return path


def tiny_openvla_config(vocab_size: int, image_size: int = 64, patch_size: int = 16, vision_dim: int = 32,
                        vision_depth: int = 2, vision_heads: int = 2, hidden_size: int = 128, num_layers: int = 2,
                        num_heads: int = 4, intermediate_size: int = 256) -> dict[str, Any]:
    """An OpenVLA config.json for a CPU-sized model with the same architecture (fused DINOv2 + SigLIP)."""
    vit = {"patch_size": patch_size, "embed_dim": vision_dim, "depth": vision_depth, "num_heads": vision_heads,
           "mlp_ratio": 2.0}
    return {
        "architectures": ["OpenVLAForActionPrediction"],
        "model_type": "openvla",
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive",
        "image_sizes": [image_size, image_size],
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "timm_override_act_layers": [None, None],
        "timm_model_kwargs": [vit, vit],
        "llm_max_length": 2048,
        "pad_token_id": 0,
        "pad_to_multiple_of": 0,
        "n_action_bins": 256,
        "norm_stats": None,
        "text_config": {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_heads,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-6,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "tie_word_embeddings": False,
        },
    }
