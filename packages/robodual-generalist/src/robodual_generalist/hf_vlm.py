"""A generalist around any Hugging Face VLM that ``AutoModelForImageTextToText`` loads from a local folder.

The folder's own processor builds the prompt (image placeholders, BOS, ...) from the camera image and
OpenVLA's instruction prompt; the action chunk follows as ``k_g * (D + 1) - 1`` ids: each dimension is
one of the last ``n_bins`` ids of the vocabulary (OpenVLA's binning, :class:`ActionTokenizer`) and a
separator id (by default the id just before the action range) sits between time steps.

Training is next-token cross-entropy on the action ids only. As for the ``openvla`` family: with ``lora``,
peft LoRA adapters go on the language model's linear layers (``lora_targets``, default all of them but the
output head) and the rest of the language model is frozen; without it the language model trains fully; the
projector (the image features' connector) trains fully when ``train_projector``; the vision tower is frozen
unless ``freeze_vision`` is false (then it trains fully). Checkpoints hold only the trainable weights plus the
base folder's hash: the base is read again from ``base`` and a changed
folder is refused. ``merge_lora`` + ``save_merged`` write a standalone Hugging Face folder. ``generate`` decodes greedily and
free-running under constraints (action ids at action slots, the separator at separator slots) with a
KV cache. Task latents are the chosen layer's hidden states at the prompt's text positions (image
placeholders and padding excluded); action latents are the hidden states at the generated action ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robodual_core.config import load_config, to_dict
from robodual_core.errors import RobodualError
from robodual_core.interfaces import Generalist, GeneralistOutput
from robodual_generalist.common import checkpointing_enable
from robodual_generalist.tokenizer import ActionTokenizer, from_local, openvla_prompt

FAMILY = "hf_vlm"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DROP = ("labels",)  # processor outputs that are not model inputs here


@dataclass
class HFVLMConfig:
    base: str = ""  # local folder with config.json, weights and the processor files
    k_g: int = 8
    image_key: str = "rgb_static"
    dtype: str = "float32"
    n_bins: int = 256
    separator_id: int = -1  # -1: the id just before the action range
    # where the action range ends (exclusive); 0: the last ids of the vocabulary that are not special tokens
    # (set from the model when it is built, and saved with it)
    action_vocab: int = 0
    latent_layer: int = -1
    freeze_vision: bool = True
    train_projector: bool = True
    # where LoRA adapters go: "language_model" (its linear layers), or "all" (every linear layer the targets name,
    # projector and vision tower included unless freeze_vision: checkpoints trained before train_projector existed)
    lora_scope: str = "language_model"
    lora: bool = True
    lora_rank: int = 32
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    gradient_checkpointing: bool = False


def reserved_ids(tok: Any, processor: Any, image_token_id: int | None) -> set[int]:
    """Ids actions must not take: the tokenizer's special tokens (also added ones marked special), the image
    placeholder and the image-layout tokens the processor writes into prompts."""
    ids = {int(i) for i in tok.all_special_ids}
    ids |= {int(i) for i, t in getattr(tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    if image_token_id is not None:
        ids.add(int(image_token_id))
    for name in ("image_token", "fake_image_token", "global_image_token", "boi_token", "eoi_token"):
        text = getattr(processor, name, None)
        if isinstance(text, str):
            i = tok.convert_tokens_to_ids(text)
            if isinstance(i, int) and i != tok.unk_token_id:
                ids.add(i)
    return ids


def action_range_end(end: int, n_bins: int, reserved: set[int]) -> int:
    """Where the action range ends (exclusive): the highest ``end`` at or below the given one whose ``n_bins``
    ids and the separator before them hold no reserved id (OpenVLA takes the vocabulary's last ids; a VLM's
    trailing special tokens, e.g. LLaVA's <image> and <pad> after the base vocabulary, are stepped over)."""
    while True:
        inside = [i for i in reserved if end - n_bins - 1 <= i < end]
        if not inside or end - n_bins - 1 <= 0:
            return end
        end = min(inside)


MERGED_FILE = "robodual_generalist.json"  # beside a merged model's config.json
# module names of the parts of a VLM that are not its language model (LLaVA, PaliGemma, Idefics3/SmolVLM, Qwen-VL)
VISION_NAMES = ("vision_tower", "vision_model", "visual")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "merger")
VISION_MODULES = r".*(vision_tower|vision_model|visual)\..*"
NON_LANGUAGE_MODULES = rf"(.*\.)?({'|'.join(VISION_NAMES + PROJECTOR_NAMES)})(\..*)?"


def parts_named(model: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The outermost submodules of ``model`` whose own name is one of ``names``."""
    found: list[tuple[str, nn.Module]] = []
    for qual, module in model.named_modules():
        if qual.rsplit(".", 1)[-1] in names and not any(qual.startswith(q + ".") for q, _ in found):
            found.append((qual, module))
    return [m for _, m in found]


def stored_hf_config(model: dict[str, Any]) -> dict[str, Any]:
    """An hf_vlm model config read back from a checkpoint: one saved before ``train_projector`` existed put LoRA
    on every linear layer (projector included, vision tower too unless ``freeze_vision``), trained nothing fully,
    and had ``freeze_vision`` false by default; rebuilt the same way, its weights fit."""
    if "train_projector" in model:
        return model
    return {**model, "train_projector": False, "lora_scope": "all", "freeze_vision": model.get("freeze_vision", False)}


def is_merged_dir(path: str | Path) -> bool:
    """A folder written by :meth:`HFVLMGeneralist.save_merged`."""
    return (Path(path) / MERGED_FILE).is_file() and (Path(path) / "config.json").is_file()


def load_vlm(path: str | Path, dtype: str = "float32") -> tuple[nn.Module, Any]:
    """The model and processor of a local Hugging Face folder (never the Hub)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    if not (path / "config.json").is_file():
        raise RobodualError(f"model.base '{path}' is not a Hugging Face model folder (no config.json)")
    if dtype not in DTYPES:
        raise RobodualError(f"config key 'model.dtype' is {dtype!r}; expected one of {', '.join(DTYPES)}")
    try:
        processor = from_local(AutoProcessor, path)  # remote code off, never a prompt
        model = from_local(AutoModelForImageTextToText, path, dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as exc:
        raise RobodualError(f"cannot load a VLM with its processor from '{path}': {exc}") from None
    return model, processor


class HFVLMGeneralist(nn.Module, Generalist):
    """Same interface as :class:`robodual_generalist.model.VLAGeneralist`, any HF image-text-to-text model."""

    def __init__(self, cfg: HFVLMConfig, action_dim: int, vlm: nn.Module | None = None, processor: Any = None):
        super().__init__()
        if vlm is None:
            vlm, processor = load_vlm(cfg.base, cfg.dtype)
        self.cfg = cfg
        self.k_g = cfg.k_g
        self.action_dim = action_dim
        from robodual_generalist.common import check_latent_layer, folder_hash

        self.vlm = vlm
        check_latent_layer(cfg.latent_layer, vlm.config)
        self.processor = processor
        tok = processor.tokenizer
        tok.padding_side = "left"  # every sequence ends at the same position
        config = vlm.config
        self.image_token_id = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
        lm_vocab = int(vlm.get_output_embeddings().weight.shape[0])
        reserved = reserved_ids(tok, processor, self.image_token_id)
        vocab = cfg.action_vocab or action_range_end(min(len(tok), lm_vocab), cfg.n_bins, reserved)
        first = vocab - cfg.n_bins
        sep = cfg.separator_id if cfg.separator_id >= 0 else first - 1
        if first <= 0 or sep < 0 or vocab > lm_vocab:
            raise RobodualError(f"the VLM at '{cfg.base}' has {lm_vocab} output ids; the action range must end at or "
                                f"below that and hold {cfg.n_bins} bins and a separator (model.action_vocab = {vocab})")
        clash = sorted(i for i in reserved if i == sep or first <= i < vocab)
        if clash:
            raise RobodualError(f"the VLM at '{cfg.base}': the action ids {first}..{vocab - 1} or the separator {sep} "
                                f"would take its special tokens {tok.convert_ids_to_tokens(clash[:5])} (ids {clash[:5]}); "
                                "set model.action_vocab (where the action range ends) or model.separator_id to free ids")
        # the range is part of the model: saved with the config, so a later tokenizer change cannot move it
        self.cfg = cfg = dataclasses.replace(cfg, action_vocab=vocab)
        self.action_tokenizer = ActionTokenizer(vocab_size=vocab, separator_id=sep, action_dim=action_dim,
                                                k_g=cfg.k_g, n_bins=cfg.n_bins)
        self.base_hash = folder_hash(Path(cfg.base)) if cfg.base and Path(cfg.base).is_dir() else None
        self._lora = False
        self._configure_trainable()
        if cfg.gradient_checkpointing:
            checkpointing_enable(self.vlm)

    # -- parameters ------------------------------------------------------------------------------
    def _configure_trainable(self) -> None:
        """LoRA on the language model (or all of it trained); projector and vision tower as the config says."""
        cfg = self.cfg
        if cfg.lora_scope not in ("language_model", "all"):
            raise RobodualError(f"hf_vlm config key 'lora_scope' is {cfg.lora_scope!r}; expected language_model or all")
        self.vlm.requires_grad_(not cfg.lora)
        if cfg.lora:
            self.apply_lora()
        if cfg.lora and cfg.lora_scope == "all":
            return  # the old layout: adapters only
        for vision in parts_named(self.vlm, VISION_NAMES):
            vision.requires_grad_(not cfg.freeze_vision)
        for projector in parts_named(self.vlm, PROJECTOR_NAMES):  # after vision: Qwen-VL's merger sits inside it
            projector.requires_grad_(cfg.train_projector)

    def apply_lora(self) -> None:
        """peft LoRA on ``lora_targets`` of the language model (default every linear layer but the output head);
        the base frozen."""
        import warnings

        from peft import LoraConfig, get_peft_model

        cfg = self.cfg
        targets: str | list[str] = cfg.lora_targets
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if cfg.lora_scope == "all":
            exclude = VISION_MODULES if cfg.freeze_vision else None
        else:
            exclude = NON_LANGUAGE_MODULES
        lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, init_lora_weights="gaussian", exclude_modules=exclude)
        self.vlm.requires_grad_(False)
        with warnings.catch_warnings():  # peft calls transformers methods deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            self.vlm = get_peft_model(self.vlm, lcfg)
        self._lora = True

    def merge_lora(self) -> None:
        """Fold the adapters into the weights (outputs unchanged)."""
        if self._lora:
            self.vlm = self.vlm.merge_and_unload()
            self._lora = False

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Trainable weights only: the base is read again from its folder."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        keep = {prefix + n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in keep}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = sorted(set(self.state_dict()) - set(state_dict))
        if strict and (missing or result.unexpected_keys):
            raise RobodualError(f"generalist weights do not match the model: missing {missing[:5]}, "
                                f"unexpected {list(result.unexpected_keys)[:5]}")
        return result

    def robodual_config(self) -> dict[str, Any]:
        return {"family": FAMILY, "model": to_dict(self.cfg), "action_dim": self.action_dim,
                "base_hash": self.base_hash}

    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.vlm.get_input_embeddings().weight.shape[1])

    # -- inputs ----------------------------------------------------------------------------------
    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        obs = batch.get("obs", {})
        if self.cfg.image_key not in obs:
            raise RobodualError(f"the generalist reads obs key '{self.cfg.image_key}' but the batch has "
                                f"{sorted(obs)}; set model.image_key or add the key to the dataset")
        x = obs[self.cfg.image_key]
        return (x[:, -1] if x.ndim == 5 else x).float()

    def encode_prompt(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The processor's left-padded model inputs for the images and the OpenVLA prompts."""
        ins = batch["instruction"]
        ins = [ins] if isinstance(ins, str) else list(ins)
        image_token = getattr(self.processor, "image_token", None) or ""
        texts = [image_token + openvla_prompt(s) for s in ins]
        images = [[img.cpu().clamp(0, 1)] for img in self._images(batch)]
        enc = self.processor(images=images, text=texts, return_tensors="pt", padding=True, do_rescale=False)
        dtype = next(self.vlm.parameters()).dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in enc.items() if k not in _DROP}

    def task_token_count(self, instruction: str) -> int:
        """Task latent tokens ``generate`` returns for ``instruction`` (the prompt's text positions)."""
        size = int(getattr(getattr(self.processor, "image_processor", None), "size", {}).get("height", 32) or 32)
        enc = self.encode_prompt({"obs": {self.cfg.image_key: torch.zeros(1, 3, size, size)},
                                  "instruction": [instruction]})
        text = enc["attention_mask"].bool()
        if self.image_token_id is not None:
            text &= enc["input_ids"] != self.image_token_id
        return int(text.sum())

    @staticmethod
    def _append(inputs: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``inputs`` with ``ids [B, n]`` appended (attended; causal for prefix-LM models)."""
        out = dict(inputs)
        out["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
        for key in ("attention_mask", "token_type_ids"):
            if key in inputs:
                out[key] = torch.cat([inputs[key], inputs[key].new_ones(ids.shape)], dim=1)
        return out

    @staticmethod
    def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
        return (attention_mask.long().cumsum(1) - 1).clamp(min=0)

    # -- training --------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token cross-entropy on the action ids of the ground-truth chunk (separators excluded)."""
        actions = batch["action"][:, : self.k_g].float()
        if actions.shape[1:] != (self.k_g, self.action_dim):
            raise RobodualError(f"the generalist expects action chunks [B, {self.k_g}, {self.action_dim}] "
                                f"(WindowDataset horizon = k_g), found {list(batch['action'].shape)}")
        tok = self.action_tokenizer
        targets = tok.encode(actions).to(self.device)
        inputs = self._append(self.encode_prompt(batch), targets)
        c = targets.shape[1]
        out = self.vlm(**inputs, position_ids=self._positions(inputs["attention_mask"]), use_cache=False,
                       logits_to_keep=c + 1)
        logits = out.logits[:, -(c + 1):-1].float()  # position j predicts chunk token j
        slots = ~tok.is_separator_slot().to(self.device)
        pred, tgt = logits[:, slots], targets[:, slots]
        loss = nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1))
        return loss, tok.accuracy(pred, tgt)

    # -- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> GeneralistOutput:
        """Free-running greedy constrained decoding of one chunk per sample -> :class:`GeneralistOutput`."""
        layer = self.cfg.latent_layer
        inputs = self.encode_prompt(batch)
        attn = inputs["attention_mask"]
        pos = self._positions(attn)
        out = self.vlm(**inputs, position_ids=pos, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[layer]
        text = attn.bool()
        if self.image_token_id is not None:
            text &= inputs["input_ids"] != self.image_token_id
        n_t = int(text.sum(1).max())
        task = hidden.new_zeros((hidden.shape[0], n_t, hidden.shape[-1]))
        task_mask = torch.zeros((hidden.shape[0], n_t), dtype=torch.bool, device=hidden.device)
        for i in range(hidden.shape[0]):
            row = hidden[i, text[i]]
            task[i, : row.shape[0]] = row
            task_mask[i, : row.shape[0]] = True
        past, logits = out.cache, out.logits[:, -1]
        tokens, latents = [], []
        for slot in range(self.action_tokenizer.chunk_len):
            tok = self.action_tokenizer.constrained_next(logits.float(), slot)
            tokens.append(tok)
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
            pos = pos[:, -1:] + 1
            out = self.vlm(input_ids=tok[:, None], attention_mask=attn, position_ids=pos, cache=past,
                           use_cache=True, output_hidden_states=True, logits_to_keep=1)
            past, logits = out.cache, out.logits[:, -1]
            latents.append(out.hidden_states[layer][:, -1])
        ids = torch.stack(tokens, dim=1)
        act_pos = self.action_tokenizer.action_positions().to(ids.device)
        action_latents = torch.stack(latents, dim=1)[:, act_pos]
        return GeneralistOutput(
            actions=self.action_tokenizer.decode(ids).float(),
            task_latents=task.float(),
            action_latents=action_latents.float(),
            task_mask=task_mask,
            action_mask=torch.ones(action_latents.shape[:2], dtype=torch.bool, device=ids.device),
        )

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, meta: dict[str, Any]) -> HFVLMGeneralist:
        """Rebuild (base weights, fresh adapters) from :meth:`robodual_config` output; refuses a base folder
        whose content changed since the checkpoint was trained."""
        if meta.get("family") != FAMILY:
            raise RobodualError(f"model config family is {meta.get('family')!r}, expected '{FAMILY}'")
        cfg = load_config(HFVLMConfig, base=stored_hf_config(meta["model"]))
        model = cls(cfg, action_dim=int(meta["action_dim"]))
        if meta.get("base_hash") and model.base_hash != meta["base_hash"]:
            raise RobodualError(f"this generalist was trained on base '{cfg.base}' with hash {meta['base_hash']}, "
                                f"but that folder now hashes to {model.base_hash}; point model.base at the "
                                "original weights")
        return model

    def save_merged(self, out: str | Path, normalizer: dict[str, Any] | None = None) -> Path:
        """Merge LoRA and write a standalone Hugging Face folder (weights, processor, robodual fields)."""
        import json

        from robodual_core.io import atomic_dir

        self.merge_lora()
        cfg = {**to_dict(self.cfg), "lora": False}
        with atomic_dir(Path(out), overwrite=True) as tmp:
            self.vlm.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            (tmp / MERGED_FILE).write_text(json.dumps({"family": FAMILY, "model": cfg,
                                                       "action_dim": self.action_dim}, indent=2))
            if normalizer:
                (tmp / "normalizer.json").write_text(json.dumps(normalizer, indent=2))
        return Path(out)

    @classmethod
    def load_merged(cls, path: str | Path) -> HFVLMGeneralist:
        """A generalist from a folder written by :meth:`save_merged` (no base folder needed)."""
        import json

        path = Path(path)
        meta = json.loads((path / MERGED_FILE).read_text())
        cfg = load_config(HFVLMConfig, base=meta["model"])
        cfg.base, cfg.lora = str(path), False
        return cls(cfg, action_dim=int(meta["action_dim"]))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", ema: bool = True
                        ) -> HFVLMGeneralist:
        """Rebuild from a run folder or a checkpoint folder written by the trainer."""
        from robodual_core.checkpoint import (
            load_model_state,
            load_state_checked,
            read_json,
            resolve_checkpoint,
            weights_file,
        )

        if is_merged_dir(path):
            return cls.load_merged(path).to(device).eval()
        ckpt = resolve_checkpoint(Path(path))
        meta = read_json(ckpt, "model_config")
        if meta.get("family") != FAMILY:
            raise RobodualError(f"checkpoint '{ckpt}' is a '{meta.get('family')}' model, not '{FAMILY}'")
        model = cls.from_config(meta)
        # only the trained weights are saved (LoRA adapters, projector): checked against what the model trains
        load_state_checked(model, load_model_state(ckpt, ema=ema), weights_file(ckpt, ema), meta, strict=False)
        return model.to(device).eval()

    @classmethod
    def load_runner(cls, path: str | Path, device: str = "cpu", pooling: str = "none",
                    latent_dtype: str = "float32", unnorm_key: str | None = None) -> Any:
        """The runtime adapter (:class:`robodual_generalist.runner.VLARunner`) for a checkpoint (``unnorm_key``:
        refused in one line, its actions are unnormalized with its own normalizer.json)."""
        from robodual_generalist.runner import VLARunner

        return VLARunner.load(path, device=device, pooling=pooling, latent_dtype=latent_dtype, model_cls=cls,
                              unnorm_key=unnorm_key)
