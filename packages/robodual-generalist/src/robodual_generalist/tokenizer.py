"""Action and text tokenizers of the generalist.

Actions (OpenVLA): each normalized action dimension in [-1, 1] is binned with ``bins = linspace(-1, 1, n)``
and mapped to ``vocab_size - digitize(clip(a, -1, 1), bins)``, i.e. onto the last ``n`` vocabulary ids;
decoding maps back through the ``n - 1`` bin centres. A chunk of ``k_g`` actions of ``D`` dims is
``k_g * D`` action ids with a dedicated separator id between consecutive time steps, so a chunk is
``k_g * (D + 1) - 1`` tokens and never round-trips through text (which is lossy).

Text (tiny models, no download): ``words``, whole words of robot instructions as one id each and anything
else as UTF-8 bytes (the default), or ``bytes`` (every byte one id; tiny checkpoints from before
``words``); or any Hugging Face tokenizer found in a checkpoint folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robodual_core.errors import RobodualError

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_SPECIALS = 3


@dataclass
class ActionTokenizer:
    """Maps normalized action chunks ``[..., k_g, D]`` to token ids ``[..., k_g * (D + 1) - 1]`` and back."""

    vocab_size: int  # the text vocabulary size the action ids count down from (OpenVLA: tokenizer.vocab_size)
    separator_id: int
    action_dim: int
    k_g: int = 8
    n_bins: int = 256

    def __post_init__(self) -> None:
        self.bins = np.linspace(-1.0, 1.0, self.n_bins)
        # OpenVLA's centres are float64; decoding hands out their float32 roundings (the GeneralistOutput is float32),
        # and exact_centres maps those back where actions leave for the robot
        self.bin_centers_f64 = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.bin_centers = torch.tensor(self.bin_centers_f64, dtype=torch.float32)
        self.first_action_id = self.vocab_size - self.n_bins
        if self.first_action_id <= self.separator_id < self.vocab_size:
            raise RobodualError(f"separator id {self.separator_id} lies inside the action id range "
                                f"[{self.first_action_id}, {self.vocab_size}); set model.separator_id (or "
                                "config.json's robodual.separator_id) to an id outside it")

    @property
    def chunk_len(self) -> int:
        """Tokens per chunk: ``k_g * D`` action ids and ``k_g - 1`` separators."""
        return self.k_g * (self.action_dim + 1) - 1

    def is_separator_slot(self) -> torch.Tensor:
        """``[chunk_len]`` bool: True where the chunk holds a separator."""
        j = torch.arange(self.chunk_len)
        return (j % (self.action_dim + 1)) == self.action_dim

    def encode_values(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalized actions (any shape) -> action ids (same shape), clipped into [-1, 1] first."""
        a = np.clip(actions.detach().cpu().double().numpy(), -1.0, 1.0)
        ids = self.vocab_size - np.digitize(a, self.bins)
        return torch.from_numpy(ids.astype(np.int64)).to(actions.device)

    def decode_values(self, ids: torch.Tensor) -> torch.Tensor:
        """Action ids (any shape) -> bin centres in [-1, 1]; ids outside the action range clip to the ends."""
        d = (self.vocab_size - ids.long() - 1).clamp(0, self.n_bins - 2)
        return self.bin_centers.to(ids.device)[d]

    def exact_centres(self, values: Any) -> np.ndarray:
        """Normalized actions as float64, values that are (float32 roundings of) bin centres replaced by the exact
        float64 centres OpenVLA's ``predict_action`` uses; any other value is kept as it is."""
        a = np.asarray(values, dtype=np.float64)
        idx = np.clip(np.rint((a + 1.0) * (self.n_bins - 1) / 2.0 - 0.5), 0, self.n_bins - 2).astype(np.int64)
        centres = self.bin_centers_f64[idx]
        return np.where(np.abs(a - centres) <= 1e-6, centres, a)

    def encode(self, chunk: torch.Tensor) -> torch.Tensor:
        """``[B, k_g, D]`` normalized actions -> ``[B, chunk_len]`` ids with separators."""
        b, k, d = chunk.shape
        if (k, d) != (self.k_g, self.action_dim):
            raise ValueError(f"expected action chunks [B, {self.k_g}, {self.action_dim}], found {list(chunk.shape)}")
        ids = self.encode_values(chunk)
        sep = torch.full((b, k, 1), self.separator_id, dtype=torch.long, device=ids.device)
        return torch.cat([ids, sep], dim=2).reshape(b, -1)[:, : self.chunk_len]

    def action_positions(self) -> torch.Tensor:
        """``[k_g * D]`` indices of the action ids inside a chunk."""
        return torch.nonzero(~self.is_separator_slot()).squeeze(1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, chunk_len]`` ids -> ``[B, k_g, D]`` actions in [-1, 1] (separator slots are ignored)."""
        acts = ids[:, self.action_positions().to(ids.device)]
        return self.decode_values(acts).reshape(ids.shape[0], self.k_g, self.action_dim)

    def constrained_next(self, logits: torch.Tensor, slot: int) -> torch.Tensor:
        """Greedy id for chunk position ``slot`` from ``logits [B, V]``: the separator at separator slots,
        the best action id elsewhere (constrained decoding never leaves the action vocabulary)."""
        if bool(self.is_separator_slot()[slot]):
            return torch.full((logits.shape[0],), self.separator_id, dtype=torch.long, device=logits.device)
        return logits[:, self.first_action_id:self.vocab_size].argmax(-1) + self.first_action_id

    @torch.no_grad()
    def accuracy(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Training metrics at action positions: ``logits [..., V]`` against target ids ``[...]``."""
        best = logits[..., self.first_action_id:self.vocab_size].argmax(-1) + self.first_action_id
        return {"action_token_acc": float((best == targets).float().mean()),
                "action_l1": float((self.decode_values(best) - self.decode_values(targets)).abs().mean())}

    def discretize(self, actions: torch.Tensor) -> torch.Tensor:
        """What the tokenizer can represent: ``decode(encode(actions))`` without the separators."""
        return self.decode_values(self.encode_values(actions))


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids; ids: pad 0, bos 1, eos 2, bytes 3..258."""

    vocab_size = NUM_SPECIALS + 256
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def encode(self, text: str) -> list[int]:
        """``[BOS, bytes...]``."""
        return [BOS_ID, *(b + NUM_SPECIALS for b in text.encode("utf-8"))]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - NUM_SPECIALS for i in ids if NUM_SPECIALS <= i < self.vocab_size).decode("utf-8", "replace")


# The words of ``WordTokenizer`` ("words"): those of the CALVIN and Meta-World instructions, the prompt's and
# common manipulation words. Frozen: ids follow this order, and checkpoints depend on them (a different list
# must be a tokenizer with another name).
WORDS = tuple("""
    a above action again all an and another anticlockwise are arm around assemble at away back backward ball
    basket basketball be behind below beside between big bin bins black block blocks blue both bottle bottom
    bowl box bring brown bulb button by cabinet can carefully carry center clockwise close closed cloth
    coffee collapse counterclockwise cover cube cup degrees dial door down downward downwards drag drawer
    drive drop dunk each edge effector end falls far faucet first five flip fold for fork forward four from
    front gently get give go goal gold grab grasp grasped gray green grey gripper hammer hand handle hold
    hole hoop in insert inside into is it item its jar kick knife knob lamp large last led left let lever
    lid lift light little location lock lower lying machine marked marker middle move mug nail near net next
    nut object of off on one onto open or orange other out outside over past peg pen pick pink place plate
    point position pour press pressing puck pull purple push pushing put quickly raise reach red release
    remove right ring robot rotate score second set shelf shelve short should shove shut side sideways
    silver slide slider sliding slowly small soccer spin sponge spoon spot spout stack stacked start stick
    store sweep swing switch table take tall target that the them then thermos these third this those three
    through to toggle top toward towards towel tower transfer tray turn twist two under unlock unplug
    unstack until up upward upwards use wall way what white window wipe with yellow
""".split())
PROMPT_PIECES = ("In", " What", "Out")  # the capitalised words of the OpenVLA prompt
_PIECE = re.compile(r" ?[A-Za-z]+|.", re.DOTALL)


class WordTokenizer:
    """Whole words as one id, with or without their leading space (``" push"``), anything else as its UTF-8
    bytes; ids: pad 0, bos 1, eos 2, bytes 3..258, then the word pieces.

    What a subword tokenizer does for a real VLA, without a download or a trained vocabulary: the OpenVLA
    prompt of a CALVIN instruction is ~20 ids (LLaMA-2's tokenizer gives ~25) instead of ~80 bytes, so the
    tiny generalist's prompt, its task latents and their cache are the size a real generalist's would be.
    Any text encodes (unknown words fall back to bytes) and decodes back unchanged.
    """

    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def __init__(self) -> None:
        self.pieces = [*PROMPT_PIECES, *(p for w in WORDS for p in (w, " " + w))]
        self.first_piece_id = NUM_SPECIALS + 256
        self.ids = {p: self.first_piece_id + i for i, p in enumerate(self.pieces)}
        self.vocab_size = self.first_piece_id + len(self.pieces)

    def encode(self, text: str) -> list[int]:
        """``[BOS, ids...]``."""
        ids = [BOS_ID]
        for piece in _PIECE.findall(text):
            i = self.ids.get(piece)
            if i is not None:
                ids.append(i)
            else:
                ids.extend(b + NUM_SPECIALS for b in piece.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            if NUM_SPECIALS <= i < self.first_piece_id:
                out.append(i - NUM_SPECIALS)
            elif self.first_piece_id <= i < self.vocab_size:
                out += self.pieces[i - self.first_piece_id].encode("utf-8")
        return out.decode("utf-8", "replace")


TEXT_TOKENIZERS = {"words": WordTokenizer, "bytes": ByteTokenizer}


def builtin_text_tokenizer(name: str) -> Any:
    """The tokenizer a tiny model (or a merged tiny model's folder) names."""
    from robodual_core.errors import RobodualError

    if name not in TEXT_TOKENIZERS:
        raise RobodualError(f"text tokenizer '{name}' (model.tiny.tokenizer) is not built in; expected one of {', '.join(TEXT_TOKENIZERS)}")
    return TEXT_TOKENIZERS[name]()


class HFTextTokenizer:
    """A Hugging Face tokenizer loaded from a local folder, with OpenVLA's LLaMA quirk.

    OpenVLA training data has the SentencePiece "empty" piece after ``Out:`` (id 29871 for LLaMA-2);
    inference must append it too, or the first action token is predicted from an unseen context.
    """

    def __init__(self, tok: Any):
        self.tok = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.bos_id = tok.bos_token_id
        empty = tok.convert_tokens_to_ids("▁")
        self.suffix = [empty] if isinstance(empty, int) and empty != tok.unk_token_id else []

    def encode(self, text: str) -> list[int]:
        ids = list(self.tok(text, add_special_tokens=True).input_ids)
        if self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]  # the prompt starts with BOS, the image patches follow it (Prismatic)
        if self.suffix and ids[-1:] != self.suffix:
            ids += self.suffix
        return ids


@contextmanager
def no_remote_code_prompt() -> Iterator[None]:
    """While it is open, transformers never asks "Do you wish to run the custom code? [y/N]".

    A folder whose config names custom code (``auto_map``: every OpenVLA checkpoint) makes transformers prompt on
    stdin for 15 s whenever a loader was not given ``trust_remote_code``; with its timeout at 0 such a loader fails
    at once instead (robodual never runs a folder's code: remote code is off)."""
    from transformers import dynamic_module_utils

    before = dynamic_module_utils.TIME_OUT_REMOTE_CODE
    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0
    try:
        yield
    finally:
        dynamic_module_utils.TIME_OUT_REMOTE_CODE = before


def from_local(loader: Any, path: Any, **kwargs: Any) -> Any:
    """``loader.from_pretrained(path)`` (``AutoTokenizer``, ``AutoProcessor``, ``AutoConfig``, ``AutoModel*``) for a
    local folder: never the Hub, never the folder's own code, never a prompt."""
    with no_remote_code_prompt():
        return loader.from_pretrained(str(path), local_files_only=True, trust_remote_code=False, **kwargs)


def openvla_prompt(instruction: str) -> str:
    """OpenVLA's prompt (PurePromptBuilder); the instruction is lower-cased as OpenVLA does."""
    return f"In: What action should the robot take to {instruction.strip().lower()}?\nOut:"
