"""The generalist: an OpenVLA-style VLA that predicts chunks of ``k_g`` actions as tokens.

Sequence layout (left-padded in a batch, so every sequence ends at the same position)::

    [PAD ..., BOS, P patch embeddings, prompt text ..., a_0 (D ids), SEP, a_1, SEP, ..., a_{k_g-1}]

Training is next-token cross-entropy on the action ids only. ``generate`` decodes free-running (never
teacher-forced), greedily, under constraints (only action ids at action slots, the separator at
separator slots), with a KV cache, for a whole batch at once. Task latents are the chosen layer's
hidden states at the prompt text positions (after the patch tokens); action latents are the hidden
states at the generated action ids' positions (each id is fed back once so its own position is seen).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robodual_core.config import load_config, to_dict
from robodual_core.errors import RobodualError
from robodual_core.interfaces import Generalist, GeneralistOutput
from robodual_generalist.common import check_latent_layer, checkpointing_enable, folder_hash
from robodual_generalist.config import GeneralistConfig, stored_model_config
from robodual_generalist.decoding import DecoderPool
from robodual_generalist.prismatic import (
    PrismaticVLA,
    is_openvla_dir,
    load_openvla,
    read_openvla_config,
    tiny_openvla_config,
)
from robodual_generalist.tokenizer import (
    TEXT_TOKENIZERS,
    ActionTokenizer,
    HFTextTokenizer,
    builtin_text_tokenizer,
    from_local,
    openvla_prompt,
)

FAMILY = "openvla"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Prefix:
    """A left-padded batch of ``[BOS, patches, text]`` prefixes (optionally followed by a target chunk)."""

    embeds: torch.Tensor  # [B, L, H]
    attention_mask: torch.Tensor  # [B, L] long
    position_ids: torch.Tensor  # [B, L]
    text_index: torch.Tensor  # [B, Nt] positions of the prompt text tokens, right-padded with 0
    text_mask: torch.Tensor  # [B, Nt] bool


DECODING_MODES = ("static", "dynamic", "recompute")


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise RobodualError(f"config key 'model.dtype' is {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


class VLAGeneralist(nn.Module, Generalist):
    """Wraps :class:`PrismaticVLA` with the action tokenizer, the prompt, LoRA and decoding."""

    def __init__(self, cfg: GeneralistConfig, action_dim: int, vla: PrismaticVLA | None = None,
                 text_tokenizer: Any = None, meta: dict[str, Any] | None = None):
        super().__init__()
        self.cfg = cfg
        self._decoders = DecoderPool()
        self.k_g = cfg.k_g
        self.action_dim = action_dim
        if vla is None:
            vla, text_tokenizer, meta = build_base(cfg)
        self.vla = vla
        check_latent_layer(cfg.latent_layer, vla.language_model.config)
        self.text_tokenizer = text_tokenizer
        self.meta = dict(meta or {})
        self.action_tokenizer = ActionTokenizer(vocab_size=self.meta["action_vocab_size"],
                                                separator_id=self.meta["separator_id"], action_dim=action_dim,
                                                k_g=cfg.k_g, n_bins=self.meta.get("n_action_bins", 256))
        self.pad_id = int(self.meta.get("pad_id", 0))
        self._lora = False
        self._configure_trainable()

    # -- parameters ------------------------------------------------------------------------------
    def _configure_trainable(self) -> None:
        cfg = self.cfg
        self.vla.requires_grad_(False)
        if cfg.lora:
            self.apply_lora()
        else:
            self.vla.language_model.requires_grad_(True)
        self.vla.projector.requires_grad_(cfg.train_projector)
        self.vla.vision_backbone.requires_grad_(not cfg.freeze_vision)
        if cfg.gradient_checkpointing:
            checkpointing_enable(self.vla.language_model)

    def apply_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        targets: str | list[str] = self.cfg.lora_targets
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        lcfg = LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha, lora_dropout=self.cfg.lora_dropout,
                          target_modules=targets, init_lora_weights="gaussian", task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            self.vla.language_model = get_peft_model(self.vla.language_model, lcfg)
        self._lora = True

    def merge_lora(self) -> None:
        """Fold the LoRA adapters into the language model weights (outputs unchanged)."""
        if self._lora:
            self.vla.language_model = self.vla.language_model.merge_and_unload()
            self._lora = False

    @property
    def trainable_only(self) -> bool:
        """Checkpoints hold only trainable weights when the base can be read again from a folder."""
        return self.cfg.base != "tiny"

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        full = super().state_dict(*args, **kwargs)
        if not self.trainable_only:
            return full
        prefix = kwargs.get("prefix", "")
        keep = {prefix + n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in keep}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if not self.trainable_only:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        expected = set(self.state_dict())
        missing = sorted(expected - set(state_dict))
        if strict and (missing or result.unexpected_keys):
            raise RobodualError(f"generalist weights do not match the model: missing {missing[:5]}, "
                                f"unexpected {list(result.unexpected_keys)[:5]}")
        return result

    def robodual_config(self) -> dict[str, Any]:
        return {"family": FAMILY, "model": to_dict(self.cfg), "action_dim": self.action_dim, "meta": self.meta,
                "base_hash": self.meta.get("base_hash")}

    @property
    def device(self) -> torch.device:
        return self.vla.projector.fc1.weight.device

    @property
    def hidden_size(self) -> int:
        return self.vla.hidden_size

    # -- sequences -------------------------------------------------------------------------------
    def prompt_ids(self, instruction: str) -> list[int]:
        """``[BOS, prompt text ids...]``."""
        return self.text_tokenizer.encode(openvla_prompt(instruction))

    def task_token_count(self, instruction: str) -> int:
        """Task latent tokens ``generate`` returns for ``instruction`` (the prompt text after BOS)."""
        return len(self.prompt_ids(instruction)) - 1

    def build_prefix(self, images: torch.Tensor, instructions: list[str], targets: torch.Tensor | None = None) -> Prefix:
        """Embeddings of ``[BOS, patches, text(, targets)]``, left-padded to one length."""
        dev = self.device
        patches = self.vla.embed_images(images.to(dev))  # [B, P, H]
        b, p, _ = patches.shape
        prompts = [self.prompt_ids(s) for s in instructions]
        n_t = [len(ids) - 1 for ids in prompts]
        tail = targets.shape[1] if targets is not None else 0
        lengths = [1 + p + n + tail for n in n_t]
        length = max(lengths)
        ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        is_patch = torch.zeros((b, length), dtype=torch.bool)
        attn = torch.zeros((b, length), dtype=torch.long)
        text_index = torch.zeros((b, max(n_t)), dtype=torch.long)
        text_mask = torch.zeros((b, max(n_t)), dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            start = length - lengths[i]
            attn[i, start:] = 1
            ids[i, start] = prompt[0]
            is_patch[i, start + 1:start + 1 + p] = True
            t0 = start + 1 + p
            ids[i, t0:t0 + n_t[i]] = torch.tensor(prompt[1:], dtype=torch.long)
            text_index[i, :n_t[i]] = torch.arange(t0, t0 + n_t[i])
            text_mask[i, :n_t[i]] = True
        if targets is not None:
            ids[:, length - tail:] = targets.cpu()
        ids, attn = ids.to(dev), attn.to(dev)
        embeds = self.vla.embed_tokens(ids)
        embeds = embeds.masked_scatter(is_patch.to(dev).unsqueeze(-1), patches.to(embeds.dtype))
        position_ids = (attn.cumsum(1) - 1).clamp(min=0)
        return Prefix(embeds, attn, position_ids, text_index.to(dev), text_mask.to(dev))

    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        obs = batch.get("obs", {})
        if self.cfg.image_key not in obs:
            raise RobodualError(f"the generalist reads obs key '{self.cfg.image_key}' but the batch has "
                                f"{sorted(obs)}; set model.image_key or add the key to the dataset")
        x = obs[self.cfg.image_key]
        if x.ndim == 5:  # [B, T, C, H, W] history: the generalist sees the current frame
            x = x[:, -1]
        return x.float()

    @staticmethod
    def _instructions(batch: dict[str, Any]) -> list[str]:
        ins = batch["instruction"]
        return [ins] if isinstance(ins, str) else list(ins)

    # -- training --------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token cross-entropy on the action ids of the ground-truth chunk (separators excluded)."""
        actions = batch["action"][:, : self.k_g].float()
        if actions.shape[1:] != (self.k_g, self.action_dim):
            raise RobodualError(f"the generalist expects action chunks [B, {self.k_g}, {self.action_dim}] "
                                f"(WindowDataset horizon = k_g), found {list(batch['action'].shape)}")
        targets = self.action_tokenizer.encode(actions).to(self.device)  # [B, C]
        prefix = self.build_prefix(self._images(batch), self._instructions(batch), targets)
        c = targets.shape[1]
        out = self.vla.language_model(inputs_embeds=prefix.embeds, attention_mask=prefix.attention_mask,
                                      position_ids=prefix.position_ids, use_cache=False, logits_to_keep=c + 1)
        logits = out.logits[:, :-1].float()  # position j predicts chunk token j
        slots = ~self.action_tokenizer.is_separator_slot().to(self.device)
        pred, tgt = logits[:, slots], targets[:, slots]
        loss = nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1))
        return loss, self.action_tokenizer.accuracy(pred, tgt)

    # -- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, Any], use_cache: bool = True, decoding: str | None = None) -> GeneralistOutput:
        """Free-running greedy decoding of one chunk per sample -> :class:`GeneralistOutput`.

        ``decoding``: "static" (a static KV cache, selection on the device, the step as a CUDA graph on CUDA:
        :mod:`robodual_generalist.decoding`), "dynamic" (a growing cache, one host round trip per token) or
        "recompute" (no cache: the whole sequence again per token); default ``model.decoding``, or "recompute"
        when ``use_cache`` is False. All three give the same tokens (tested).
        """
        mode = decoding or ("recompute" if not use_cache else self.cfg.decoding)
        if mode not in DECODING_MODES:
            raise RobodualError(f"generalist decoding is {mode!r}; expected one of {', '.join(DECODING_MODES)}")
        layer = self.cfg.latent_layer
        prefix = self.build_prefix(self._images(batch), self._instructions(batch))
        if mode == "static":
            B, L = prefix.attention_mask.shape
            decoder = self._decoders.get(self.vla.language_model, self.vla.embed_tokens, self.action_tokenizer,
                                         layer, B, L, self.device, prefix.embeds.dtype,
                                         graph=None if self.cfg.cuda_graphs == "auto" else self.cfg.cuda_graphs == "on")
            hidden, ids, latents = decoder.run(prefix.embeds, prefix.attention_mask, prefix.position_ids)
            ids, latents = ids.clone(), latents.clone()
        else:
            hidden, ids, latents = self._decode_dynamic(prefix, layer, use_cache=mode == "dynamic")
        task = torch.gather(hidden, 1, prefix.text_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        task = task * prefix.text_mask.unsqueeze(-1)
        act_pos = self.action_tokenizer.action_positions().to(ids.device)
        action_latents = latents[:, act_pos]
        actions = self.action_tokenizer.decode(ids)
        return GeneralistOutput(
            actions=actions.float(),
            task_latents=task.float(),
            action_latents=action_latents.float(),
            task_mask=prefix.text_mask,
            action_mask=torch.ones(action_latents.shape[:2], dtype=torch.bool, device=ids.device),
        )

    def _decode_dynamic(self, prefix: Prefix, layer: int, use_cache: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference decoding: a DynamicCache through the Cache API (or none), one token at a time."""
        from transformers import DynamicCache

        lm = self.vla.language_model
        attn, pos = prefix.attention_mask, prefix.position_ids
        cache = DynamicCache(config=lm.config) if use_cache else None
        out = lm(inputs_embeds=prefix.embeds, attention_mask=attn, position_ids=pos, cache=cache,
                 use_cache=use_cache, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[layer]
        logits = out.logits[:, -1]
        tokens, latents = [], []
        embeds = prefix.embeds
        for slot in range(self.action_tokenizer.chunk_len):
            tok = self.action_tokenizer.constrained_next(logits.float(), slot)
            tokens.append(tok)
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
            new = self.vla.embed_tokens(tok[:, None])
            if use_cache:
                out = lm(inputs_embeds=new, attention_mask=attn, position_ids=pos[:, -1:], cache=cache,
                         use_cache=True, output_hidden_states=True, logits_to_keep=1)
            else:
                embeds = torch.cat([embeds, new], dim=1)
                out = lm(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=False,
                         output_hidden_states=True, logits_to_keep=1)
            latents.append(out.hidden_states[layer][:, -1])
            logits = out.logits[:, -1]
        return hidden, torch.stack(tokens, dim=1), torch.stack(latents, dim=1)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load_runner(cls, path: str | Path, **options: Any) -> Any:
        """The runtime adapter (:class:`robodual_generalist.runner.VLARunner`) for a checkpoint."""
        from robodual_generalist.runner import VLARunner

        return VLARunner.load(path, model_cls=cls, **options)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", ema: bool = True,
                        unnorm_key: str | None = None) -> VLAGeneralist:
        """Rebuild from a run folder, a checkpoint folder, an OpenVLA-format folder written by merge, or a stock
        OpenVLA checkpoint (one action per call, its dimension from ``norm_stats``: ``unnorm_key`` picks the
        dataset when they differ)."""
        path = Path(path)
        if is_openvla_dir(path):
            return load_merged(path, unnorm_key=unnorm_key).to(device).eval()
        from robodual_core.checkpoint import (
            load_model_state,
            load_state_checked,
            read_json,
            resolve_checkpoint,
            weights_file,
        )

        ckpt = resolve_checkpoint(path)
        meta = read_json(ckpt, "model_config")
        if meta.get("family") != FAMILY:
            raise RobodualError(f"checkpoint '{ckpt}' is a '{meta.get('family')}' model, not a generalist "
                                f"('{FAMILY}')")
        cfg = load_config(GeneralistConfig, base=stored_model_config(meta["model"]))
        model = cls(cfg, action_dim=int(meta["action_dim"]))
        if meta.get("base_hash") and model.meta.get("base_hash") != meta["base_hash"]:
            raise RobodualError(f"checkpoint '{ckpt}' was trained on base '{cfg.base}' with hash "
                                f"{meta['base_hash']}, but that folder now hashes to {model.meta.get('base_hash')}")
        # only the trained weights are saved (LoRA adapters, projector): checked against what the model trains
        load_state_checked(model, load_model_state(ckpt, ema=ema), weights_file(ckpt, ema), meta, strict=False)
        return model.to(device).eval()


def build_base(cfg: GeneralistConfig) -> tuple[PrismaticVLA, Any, dict[str, Any]]:
    """The network, text tokenizer and token-layout metadata for ``cfg.base``."""
    dtype = _dtype(cfg.dtype)
    if cfg.base == "tiny":
        t = cfg.tiny
        text = builtin_text_tokenizer(t.tokenizer)
        separator = text.vocab_size  # one id past the text ids, then 256 action ids
        vocab = separator + 1 + 256
        config = tiny_openvla_config(vocab, image_size=t.image_size, patch_size=t.patch_size,
                                     vision_dim=t.vision_dim, vision_depth=t.vision_depth,
                                     vision_heads=t.vision_heads, hidden_size=t.hidden_size,
                                     num_layers=t.num_layers, num_heads=t.num_heads,
                                     intermediate_size=t.intermediate_size)
        config["robodual"] = {"text_tokenizer": t.tokenizer, "action_vocab_size": vocab, "separator_id": separator}
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            vla = PrismaticVLA(config)
        return vla.to(dtype), text, {"action_vocab_size": vocab, "separator_id": separator, "pad_id": 0,
                                     "text_tokenizer": t.tokenizer}
    path = Path(cfg.base)
    config = read_openvla_config(path)
    check_tokenizer_files(path, config)  # before a 7B model is read
    vla = load_openvla(path, dtype=dtype)
    text, meta = text_tokenizer_for(path, config)
    meta["base_hash"] = folder_hash(path)
    return vla, text, meta


# the files any one of which lets transformers' AutoTokenizer build a tokenizer from a folder
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def check_tokenizer_files(path: Path, config: dict[str, Any]) -> None:
    """A folder that needs a Hugging Face tokenizer and holds none is one line naming the folder and the files
    (checked before transformers is asked: it would print warnings and a multi-line error)."""
    if (config.get("robodual") or {}).get("text_tokenizer") in TEXT_TOKENIZERS:
        return
    if not any((Path(path) / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        raise RobodualError(f"'{path}' has no text tokenizer: none of {', '.join(TOKENIZER_VOCAB_FILES)} is there "
                            "(an OpenVLA checkpoint folder holds tokenizer.json / tokenizer.model and "
                            "tokenizer_config.json beside config.json; copy them from the model it came from)")


def _quiet_transformers() -> Any:
    """transformers' own log lines (warnings about the folder's config) silenced while a tokenizer loads."""
    from contextlib import contextmanager

    from transformers.utils import logging as hf_logging

    @contextmanager
    def quiet() -> Any:
        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            hf_logging.set_verbosity(before)

    return quiet()


def text_tokenizer_for(path: Path, config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The text tokenizer of an OpenVLA-format folder and where its action/separator ids lie."""
    extra = config.get("robodual") or {}
    if extra.get("text_tokenizer") in TEXT_TOKENIZERS:
        text: Any = builtin_text_tokenizer(extra["text_tokenizer"])
        meta = {"action_vocab_size": extra["action_vocab_size"], "separator_id": extra["separator_id"], "pad_id": 0,
                "text_tokenizer": extra["text_tokenizer"]}
        return text, meta
    check_tokenizer_files(path, config)
    from transformers import AutoTokenizer

    try:  # remote code off: an OpenVLA folder's auto_map must not make transformers prompt
        with _quiet_transformers():
            tok = from_local(AutoTokenizer, path)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise RobodualError(f"cannot load the text tokenizer of '{path}': {type(exc).__name__}: "
                            f"{reason[:300]}{'...' if len(reason) > 300 else ''}") from None
    text = HFTextTokenizer(tok)
    # actions take the last ids of the tokenizer's base vocabulary, as OpenVLA's ActionTokenizer does
    # (tokenizer.vocab_size: 32000 for LLaMA-2; added tokens such as <PAD> come after it). An OpenVLA config
    # names it too: predict_action decodes with text_config.vocab_size - pad_to_multiple_of (32064 - 64).
    rows = int(config["text_config"]["vocab_size"])
    vocab = rows - int(config["pad_to_multiple_of"]) if "pad_to_multiple_of" in config else int(tok.vocab_size)
    pad = int(config.get("pad_token_id", text.pad_id))
    # OpenVLA pads the embedding to a multiple of 64: a row past the tokenizer is free for the separator; without
    # one, the id just before the action range (a rarely used token, as the action ids are)
    free = [i for i in range(len(tok), rows) if i != pad]
    n_bins = int(extra.get("n_action_bins", config.get("n_action_bins", 256)))
    separator = int(extra.get("separator_id", free[0] if free else vocab - n_bins - 1))
    return text, {"action_vocab_size": int(extra.get("action_vocab_size", vocab)), "separator_id": separator,
                  "pad_id": pad, "text_tokenizer": "hf"}


def load_merged(path: Path, unnorm_key: str | None = None) -> VLAGeneralist:
    """A generalist from a folder written by ``robodual generalist merge`` (OpenVLA format + robodual fields),
    or from a stock OpenVLA checkpoint (:func:`load_stock`)."""
    config = read_openvla_config(path)
    extra = config.get("robodual") or {}
    if "generalist" not in extra:
        return load_stock(path, config, unnorm_key)
    cfg = load_config(GeneralistConfig, base=stored_model_config(extra["generalist"]))
    cfg.base, cfg.lora = str(path), False
    check_tokenizer_files(path, config)
    vla = load_openvla(path, dtype=_dtype(cfg.dtype))
    text, meta = text_tokenizer_for(path, config)
    meta["base_hash"] = folder_hash(path)
    return VLAGeneralist(cfg, action_dim=int(extra["action_dim"]), vla=vla, text_tokenizer=text, meta=meta)




def load_stock(path: Path, config: dict[str, Any], unnorm_key: str | None = None) -> VLAGeneralist:
    """A stock OpenVLA checkpoint as a generalist, as OpenVLA's ``predict_action`` runs it: one action per call
    (``k_g = 1``) of ``len(norm_stats[unnorm_key]["action"]["q01"])`` dimensions, greedy, in the folder's
    ``torch_dtype`` (float32 when it names none); no LoRA, nothing trained."""
    from robodual_generalist.norm_stats import action_dim

    dim = action_dim(config, unnorm_key, path)
    dtype = str(config.get("torch_dtype") or "float32")
    cfg = GeneralistConfig(base=str(path), lora=False, k_g=1, dtype=dtype if dtype in DTYPES else "float32",
                           freeze_vision=True, train_projector=False)
    check_tokenizer_files(path, config)
    vla = load_openvla(path, dtype=_dtype(cfg.dtype))
    text, meta = text_tokenizer_for(path, config)
    meta["base_hash"] = folder_hash(path)
    meta["n_action_bins"] = int(config.get("n_action_bins", 256))
    return VLAGeneralist(cfg, action_dim=dim, vla=vla, text_tokenizer=text, meta=meta)
