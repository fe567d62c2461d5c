"""Action and text tokenizers of the generalist.

Actions (OpenVLA): each normalized action dimension in [-1, 1] is binned with ``bins = linspace(-1, 1, n)``
and mapped to ``vocab_size - digitize(clip(a, -1, 1), bins)``, i.e. onto the last ``n`` vocabulary ids;
decoding maps back through the ``n - 1`` bin centres. A chunk of ``k_g`` actions of ``D`` dims is
``k_g * D`` action ids with a dedicated separator id between consecutive time steps, so a chunk is
``k_g * (D + 1) - 1`` tokens and never round-trips through text (which is lossy).

Text: a byte-level tokenizer that needs no download (tiny models), or any Hugging Face tokenizer found
in a checkpoint folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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
        self.bin_centers = torch.tensor((self.bins[:-1] + self.bins[1:]) / 2.0, dtype=torch.float32)
        self.first_action_id = self.vocab_size - self.n_bins
        if self.first_action_id <= self.separator_id < self.vocab_size:
            raise ValueError(f"separator id {self.separator_id} lies inside the action id range "
                             f"[{self.first_action_id}, {self.vocab_size})")

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
        if self.suffix and ids[-1:] != self.suffix:
            ids += self.suffix
        return ids


def openvla_prompt(instruction: str) -> str:
    """OpenVLA's prompt (PurePromptBuilder); the instruction is lower-cased as OpenVLA does."""
    return f"In: What action should the robot take to {instruction.strip().lower()}?\nOut:"
