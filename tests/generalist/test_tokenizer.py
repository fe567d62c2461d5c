"""Action tokenizer: OpenVLA binning, bin edges, clipping, separators, robust decoding."""

import numpy as np
import torch

from robodual_generalist.tokenizer import ActionTokenizer, ByteTokenizer, openvla_prompt


def tok(**kw):
    args = dict(vocab_size=516, separator_id=259, action_dim=3, k_g=4)
    args.update(kw)
    return ActionTokenizer(**args)


def test_ids_are_the_last_256_and_match_openvla_formula():
    t = tok()
    a = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0])
    ids = t.encode_values(a)
    bins = np.linspace(-1, 1, 256)
    assert ids.tolist() == (516 - np.digitize(a.numpy().astype(np.float64), bins)).tolist()
    assert ids.min() >= 516 - 256 and ids.max() <= 515
    assert t.encode_values(torch.tensor([-1.0])).item() == 515  # digitize(-1) = 1
    assert t.encode_values(torch.tensor([1.0])).item() == 260  # digitize(1) = 256


def test_round_trip_error_is_within_one_bin_and_edges_clip():
    t = tok()
    width = 2 / 255
    a = torch.linspace(-1, 1, 1001)
    back = t.decode_values(t.encode_values(a))
    assert (back - a).abs().max() <= width + 1e-6
    edges = torch.tensor(np.linspace(-1, 1, 256), dtype=torch.float32)
    back = t.decode_values(t.encode_values(edges))
    assert (back - edges).abs().max() <= width + 1e-6
    assert back.min() >= -1 and back.max() <= 1
    # values outside [-1, 1] clip to the extreme bins
    out = t.decode_values(t.encode_values(torch.tensor([-7.0, 5.0])))
    assert out.tolist() == t.decode_values(t.encode_values(torch.tensor([-1.0, 1.0]))).tolist()
    # decoding is idempotent on the representable values
    assert torch.equal(t.discretize(back), back)


def test_decode_never_fails_on_ids_outside_the_action_range():
    t = tok()
    ids = torch.tensor([0, 1, 259, 259, 600, -5, 10**6])
    vals = t.decode_values(ids)
    assert torch.isfinite(vals).all() and vals.abs().max() < 1


def test_chunks_have_separators_between_steps():
    t = tok()
    chunk = torch.rand(2, 4, 3) * 2 - 1
    ids = t.encode(chunk)
    assert ids.shape == (2, t.chunk_len) == (2, 4 * 4 - 1)
    sep = t.is_separator_slot()
    assert (ids[:, sep] == 259).all() and sep.sum() == 3
    assert (ids[:, ~sep] >= 260).all()
    torch.testing.assert_close(t.decode(ids), t.discretize(chunk))


def test_separator_may_not_collide_with_actions():
    import pytest

    from robodual_core.errors import RobodualError

    with pytest.raises(RobodualError, match="separator"):
        tok(separator_id=300)


def test_prompt_and_byte_tokenizer():
    p = openvla_prompt("Open The Drawer ")
    assert p == "In: What action should the robot take to open the drawer?\nOut:"
    b = ByteTokenizer()
    ids = b.encode(p)
    assert ids[0] == b.bos_id and max(ids) < b.vocab_size and b.decode(ids) == p


def test_word_tokenizer_round_trips_any_text_and_keeps_prompts_short():
    import json
    from pathlib import Path

    from robodual_envs.metaworld.tasks import INSTRUCTIONS
    from robodual_generalist.tokenizer import WordTokenizer

    t, b = WordTokenizer(), ByteTokenizer()
    for text in ["", "push the red block", "Ünïcode — pushing  two\tspaces\n!", "In: What", " x", "0?\nOut:"]:
        ids = t.encode(text)
        assert ids[0] == t.bos_id and all(0 <= i < t.vocab_size for i in ids) and t.decode(ids) == text
    import robodual_envs.calvin

    tasks = json.loads((Path(robodual_envs.calvin.__file__).parent / "data" / "tasks.json").read_text())["tasks"]
    instructions = [s for v in INSTRUCTIONS.values() for s in v] + [x["validation_instruction"] for x in tasks]
    for text in instructions:
        ids, nbytes = t.encode(openvla_prompt(text)), len(b.encode(openvla_prompt(text)))
        assert len(ids) <= 32 and len(ids) < nbytes / 2.5, (text, len(ids), nbytes)  # a word is one id


def test_word_tokenizer_vocabulary_is_frozen():
    """Checkpoints store ids: the word list (and so every id) must never change under the name 'words'."""
    import hashlib

    from robodual_generalist.tokenizer import WORDS, WordTokenizer

    assert hashlib.sha256(" ".join(WORDS).encode()).hexdigest()[:16] == "4bca96a5c835b04f"
    t = WordTokenizer()
    assert t.vocab_size == 3 + 256 + 3 + 2 * 258
    assert t.encode(" push") == [t.bos_id, t.ids[" push"]] and t.ids["In"] == 259


def test_openvla_folder_with_a_hugging_face_tokenizer(tmp_path):
    """Action ids end at the tokenizer's base vocabulary (added tokens such as <pad> come after it, as in
    OpenVLA's LLaMA-2: 32000), the separator takes a free padded embedding row, and the prompt starts with BOS
    even when the tokenizer does not add it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from robodual_generalist.model import text_tokenizer_for

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, 300)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"pad_token": "<pad>"})
    fast.save_pretrained(tmp_path)
    text, meta = text_tokenizer_for(tmp_path, {"text_config": {"vocab_size": 320}, "pad_token_id": 300})
    assert meta["action_vocab_size"] == 300 and meta["pad_id"] == 300 and meta["separator_id"] == 301
    t = tok(vocab_size=meta["action_vocab_size"], separator_id=meta["separator_id"])
    assert t.first_action_id == 44 and not t.first_action_id <= meta["separator_id"] < 300
    assert text.encode("w5 w6")[:3] == [1, 5, 6]


def test_runner_names_a_model_folder_without_normalizer(tmp_path):
    import pytest

    from robodual_core.errors import RobodualError
    from robodual_generalist.runner import VLARunner

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RobodualError, match="has no normalizer.json.*generalist merge"):
        VLARunner.load(tmp_path)
