"""Issue 22's loose ends of the generalist: no remote-code prompt, several generalist caches on one store,
hf_vlm's freeze_vision / train_projector and its run config, bad --steps and a too-shallow tiny vision tower."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from generalist_helpers import make_store, tiny_paligemma

from robodual_core.errors import RobodualError

ROOT = Path(__file__).resolve().parents[2]
GENERALIST_SRC = ROOT / "packages" / "robodual-generalist" / "src" / "robodual_generalist"


def _one_line(text: str) -> str:
    text = str(text).strip()
    assert text and "\n" not in text, text
    return text


@pytest.fixture
def run(run):
    """tests/conftest.py's ``run``, returning (exit code, stdout, the last ``error:`` line or all of stderr)."""
    def _run(*args):
        code, cap = run(*args)
        errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
        return code, cap.out, errors[-1] if errors else cap.err

    return _run


# -- 1. remote code is off: an OpenVLA folder's auto_map never makes transformers prompt ---------------------------
def openvla_tokenizer_folder(folder: Path) -> Path:
    """A tiny word-level tokenizer saved as an OpenVLA checkpoint saves it: config.json and tokenizer_config.json
    name custom code (auto_map) that the folder does not even hold."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(61)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoProcessor": "processing_prismatic.PrismaticProcessor"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    config = {"model_type": "openvla", "text_config": {"vocab_size": 64},
              "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                           "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _run_with_open_stdin(code: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter whose stdin is a pipe that never closes (a prompt would wait on it);
    returns stdout + stderr."""
    import tempfile

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE, stdout=log,
                                stderr=subprocess.STDOUT, env=env, text=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            proc.stdin.close()
        log.seek(0)
        out = log.read()
    assert proc.returncode == 0, f"exit {proc.returncode} (killed after {timeout} s?): {out}"
    return out


@pytest.mark.hostile
@pytest.mark.slow
def test_openvla_tokenizer_loads_without_prompt(tmp_path):
    folder = openvla_tokenizer_folder(tmp_path / "openvla")
    out = _run_with_open_stdin(f"""
        import json, time
        from pathlib import Path
        from robodual_generalist.model import text_tokenizer_for
        path = Path({str(folder)!r})
        start = time.perf_counter()
        text, meta = text_tokenizer_for(path, json.loads((path / "config.json").read_text()))
        print("ELAPSED", time.perf_counter() - start, "IDS", text.encode("w1 w2"))
    """)
    assert "custom code" not in out and "[y/N]" not in out, out
    elapsed = float(re.search(r"ELAPSED (\S+)", out).group(1))
    assert elapsed < 10, f"the tokenizer took {elapsed:.1f} s to load (a prompt waits 15 s): {out}"
    assert "IDS [1, 4, 5]" in out


@pytest.mark.hostile
@pytest.mark.slow
def test_custom_code_is_refused_at_once_never_asked(tmp_path):
    """Remote code off: a loader of the folder's custom code fails quickly instead of asking, with or without
    trust_remote_code given (no_remote_code_prompt covers loaders that forget it)."""
    folder = openvla_tokenizer_folder(tmp_path / "openvla")
    out = _run_with_open_stdin(f"""
        import time
        from transformers import AutoConfig
        from robodual_generalist.tokenizer import from_local, no_remote_code_prompt
        for label, load in (("explicit", lambda: from_local(AutoConfig, {str(folder)!r})),
                            ("forgotten", lambda: AutoConfig.from_pretrained({str(folder)!r}, local_files_only=True))):
            start = time.perf_counter()
            try:
                with no_remote_code_prompt():
                    load()
                print(label, "LOADED")
            except ValueError:
                print(label, "REFUSED", round(time.perf_counter() - start, 2))
    """)
    assert "custom code? [y/N]" not in out, out
    for label in ("explicit", "forgotten"):
        seconds = float(re.search(rf"{label} REFUSED (\S+)", out).group(1))
        assert seconds < 5, out


def test_every_pretrained_load_goes_through_from_local():
    """Each ``from_pretrained`` of a local folder in the generalist package passes trust_remote_code=False."""
    import ast

    calls, offenders = 0, []
    for file in sorted(GENERALIST_SRC.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                calls += 1
                trust = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
                if not (trust and isinstance(trust[0], ast.Constant) and trust[0].value is False):
                    offenders.append(f"{file.name}:{node.lineno}")
    assert calls and not offenders, offenders


# -- 2. several generalist caches on one store ------------------------------------------------------------------
def fake_checkpoint(run_dir: Path, step: int, seed: int) -> Path:
    """A checkpoint folder as far as the cache is concerned (its hash covers model_config.json and the weights)."""
    ckpt = run_dir / "checkpoints" / str(step)
    ckpt.mkdir(parents=True)
    (ckpt / "model_config.json").write_text(json.dumps({"kind": "generalist", "family": "openvla", "seed": seed}))
    (ckpt / "model.safetensors").write_bytes(os.urandom(64))
    (ckpt / "training_state.json").write_text(json.dumps({"step": step}))  # a complete checkpoint
    return ckpt.resolve()


def fake_cache(store: Path, ckpt: Path, complete: bool = True, hidden: int = 8, k_g: int = 2) -> str:
    """A generalist cache of ``ckpt`` in ``store`` with zero rows, as `robodual generalist cache` records it."""
    from robodual_core.data import open_dataset
    from robodual_core.data.generalist_cache import GeneralistCacheWriter, checkpoint_date, checkpoint_hash

    ds = open_dataset(store)
    d = int(ds.array("action").shape[-1])
    h = checkpoint_hash(ckpt)
    writer = GeneralistCacheWriter(store, h, ds.num_steps, k_g, d, 3, k_g * d, hidden, dtype="float32",
                                   source=str(ckpt), source_date=checkpoint_date(ckpt))
    if complete:
        writer.write(0, {"actions": np.zeros((ds.num_steps, k_g, d), np.float32),
                         "task_latents": np.ones((ds.num_steps, 3, hidden), np.float32),
                         "action_latents": np.ones((ds.num_steps, k_g * d, hidden), np.float32),
                         "task_mask": np.ones((ds.num_steps, 3), bool),
                         "action_mask": np.ones((ds.num_steps, k_g * d), bool)})
        writer.finalize()
    return h


@pytest.fixture
def two_generalists(tmp_path):
    """A store with the caches of two generalist runs (a and b), each from its checkpoint 2."""
    store = make_store(tmp_path / "store.zarr", episodes=2, steps=5, action_dim=3)
    ckpt_a = fake_checkpoint(tmp_path / "run_a", 2, seed=1)
    ckpt_b = fake_checkpoint(tmp_path / "run_b", 2, seed=2)
    return store, tmp_path / "run_a", tmp_path / "run_b", fake_cache(store, ckpt_a), fake_cache(store, ckpt_b)


@pytest.mark.hostile
def test_auto_with_several_caches_lists_them_in_one_line(two_generalists):
    from robodual_core.data.generalist_cache import resolve_cache

    store, run_a, run_b, ha, hb = two_generalists
    with pytest.raises(RobodualError) as exc:
        resolve_cache(store, "auto")
    msg = _one_line(exc.value)
    assert "2 complete generalist caches" in msg and ha in msg and hb in msg
    assert str(run_a.resolve() / "checkpoints" / "2") in msg and str(run_b.resolve() / "checkpoints" / "2") in msg
    assert re.search(r"checkpoint of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", msg)


@pytest.mark.hostile
def test_auto_without_a_complete_cache(tmp_path):
    from robodual_core.data.generalist_cache import resolve_cache

    store = make_store(tmp_path / "store.zarr", episodes=2, steps=5, action_dim=3)
    with pytest.raises(RobodualError, match="no complete generalist cache .caches: none."):
        resolve_cache(store, "auto")
    h = fake_cache(store, fake_checkpoint(tmp_path / "run", 1, seed=0), complete=False)
    with pytest.raises(RobodualError) as exc:
        resolve_cache(store, "auto")
    assert h in _one_line(exc.value) and "incomplete 0/10" in str(exc.value)


def test_auto_takes_the_only_complete_cache(two_generalists, tmp_path):
    from robodual_core.data.generalist_cache import resolve_cache

    store = make_store(tmp_path / "one.zarr", episodes=2, steps=5, action_dim=3)
    h = fake_cache(store, fake_checkpoint(tmp_path / "run_c", 3, seed=3))
    fake_cache(store, fake_checkpoint(tmp_path / "run_d", 3, seed=4), complete=False)  # never chosen
    assert resolve_cache(store, "auto") == h


def test_a_run_or_checkpoint_folder_names_its_cache(two_generalists):
    from robodual_core.data.generalist_cache import resolve_cache

    store, run_a, run_b, ha, hb = two_generalists
    assert resolve_cache(store, str(run_a)) == ha
    assert resolve_cache(store, str(run_b / "checkpoints" / "2")) == hb
    assert resolve_cache(store, hb) == hb
    # a relative spelling of the same folder
    assert resolve_cache(store, os.path.relpath(run_a, Path.cwd())) == ha


def test_a_run_with_several_cached_checkpoints_takes_its_latest(two_generalists):
    from robodual_core.data.generalist_cache import resolve_cache

    store, run_a, _, ha, _ = two_generalists
    h4 = fake_cache(store, fake_checkpoint(run_a, 4, seed=5))
    assert resolve_cache(store, str(run_a)) == h4
    assert resolve_cache(store, str(run_a / "checkpoints" / "2")) == ha


@pytest.mark.hostile
def test_a_run_whose_latest_checkpoint_is_not_cached_among_several(two_generalists):
    from robodual_core.data.generalist_cache import resolve_cache

    store, run_a, _, ha, _ = two_generalists
    h4 = fake_cache(store, fake_checkpoint(run_a, 4, seed=5))
    fake_checkpoint(run_a, 6, seed=6)  # trained on, not cached
    with pytest.raises(RobodualError) as exc:
        resolve_cache(store, str(run_a))
    msg = _one_line(exc.value)
    assert "2 caches of that run's checkpoints" in msg and ha in msg and h4 in msg and "checkpoint folder" in msg


@pytest.mark.hostile
def test_a_checkpoint_changed_since_its_cache_is_refused(two_generalists):
    from robodual_core.data.generalist_cache import resolve_cache

    store, run_a, _, ha, _ = two_generalists
    (run_a / "checkpoints" / "2" / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(RobodualError) as exc:
        resolve_cache(store, str(run_a))
    msg = _one_line(exc.value)
    assert ha in msg and "changed since" in msg and "robodual generalist cache --policy" in msg


@pytest.mark.hostile
def test_a_generalist_without_a_cache_is_refused(two_generalists, tmp_path):
    from robodual_core.data.generalist_cache import resolve_cache

    store, _, _, ha, hb = two_generalists
    fake_checkpoint(tmp_path / "run_new", 1, seed=9)
    with pytest.raises(RobodualError) as exc:
        resolve_cache(store, str(tmp_path / "run_new"))
    msg = _one_line(exc.value)
    assert "has no cache of that generalist" in msg and ha in msg and hb in msg


@pytest.mark.hostile
@pytest.mark.parametrize("spec", ["0123456789abcdef", "no/such/folder", ""])
def test_neither_hash_nor_folder(two_generalists, spec):
    from robodual_core.data.generalist_cache import resolve_cache

    store, _, _, ha, hb = two_generalists
    with pytest.raises(RobodualError) as exc:
        resolve_cache(store, spec)
    msg = _one_line(exc.value)
    assert "has no generalist cache for checkpoint" in msg and "takes auto, a cache's hash" in msg
    assert ha in msg and hb in msg


@pytest.mark.hostile
def test_a_folder_that_is_no_checkpoint(two_generalists, tmp_path):
    from robodual_core.data.generalist_cache import resolve_cache

    store = two_generalists[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobodualError, match="empty folder"):
        resolve_cache(store, str(tmp_path / "empty"))


def test_a_moved_checkpoint_is_found_by_its_hash(two_generalists, tmp_path):
    import shutil

    from robodual_core.data.generalist_cache import resolve_cache

    store, run_a, _, ha, _ = two_generalists
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(run_a / "checkpoints" / "2", moved)
    assert resolve_cache(store, str(moved)) == ha


@pytest.mark.hostile
def test_train_specialist_auto_with_several_caches_is_one_line(two_generalists, run, tmp_path):
    store, run_a, _, ha, hb = two_generalists
    code, _, err = run("train", "specialist", "--dataset", store, "--out", tmp_path / "spec",
                       "--generalist-cache", "auto", "--steps", 1)
    assert code == 1 and err.startswith("error: --generalist-cache auto") and ha in err and hb in err
    assert str(run_a.resolve()) in err


@pytest.mark.slow
def test_train_specialist_on_a_run_folder_cache(two_generalists, run, tmp_path):
    store, _, run_b, _, hb = two_generalists
    config = tmp_path / "specialist.yaml"
    config.write_text("model: {hidden: 16, depth: 1, heads: 2, k_s: 2, sensors: [], guidance: {null_tokens: 2}}\n"
                      "trainer: {batch_size: 4, num_workers: 0, warmup_steps: 0, ckpt_every: 1, log_every: 1}\n")
    code, _, err = run("train", "specialist", "--dataset", store, "--out", tmp_path / "spec", "--config", config,
                       "--generalist-cache", run_b, "--steps", 1)
    assert code == 0, err
    record = json.loads((tmp_path / "spec" / "checkpoints" / "1" / "generalist.json").read_text())
    assert record["hash"] == hb and record["checkpoint"] == str((run_b / "checkpoints" / "2").resolve())


# -- 3. hf_vlm: LoRA on the language model, projector and vision tower as their keys say ------------------------
@pytest.fixture(scope="module")
def paligemma(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paligemma")
    tiny_paligemma(folder)
    return folder


def _hf(base, **kw):
    from robodual_generalist.hf_vlm import HFVLMConfig, HFVLMGeneralist

    return HFVLMGeneralist(HFVLMConfig(base=str(base), k_g=2, lora_rank=4, **kw), action_dim=3)


def _trainable(model) -> dict[str, set[str]]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {"lora": {n for n in names if "lora_" in n},
            "full": {n for n in names if "lora_" not in n}}


def test_hf_vlm_defaults_lora_on_the_language_model_projector_trained_vision_frozen(paligemma):
    t = _trainable(_hf(paligemma))
    assert t["lora"] and all(".language_model." in n for n in t["lora"])
    assert t["full"] and all("multi_modal_projector" in n for n in t["full"])


def test_hf_vlm_train_projector_false_and_freeze_vision_false(paligemma):
    t = _trainable(_hf(paligemma, train_projector=False))
    assert t["lora"] and not t["full"]
    t = _trainable(_hf(paligemma, freeze_vision=False))
    assert any("vision_tower" in n for n in t["full"]) and not any("vision_tower" in n for n in t["lora"])
    full = _trainable(_hf(paligemma, lora=False, train_projector=False))
    assert not full["lora"] and full["full"] and not any("projector" in n or "vision_tower" in n for n in full["full"])


def test_hf_vlm_family_build_passes_train_projector(paligemma):
    from robodual_generalist.config import GeneralistConfig
    from robodual_generalist.families import HF_VLM

    model = HF_VLM.build(GeneralistConfig(base=str(paligemma), k_g=2, lora_rank=4, train_projector=False), 3)
    assert model.cfg.train_projector is False and model.cfg.freeze_vision is True
    assert not _trainable(model)["full"]


def test_hf_vlm_checkpoint_from_before_train_projector_rebuilds_its_layout(paligemma):
    """Saved before train_projector existed: LoRA everywhere but the (frozen) vision tower, nothing else trained."""
    from robodual_core.config import to_dict
    from robodual_generalist.hf_vlm import HFVLMGeneralist

    meta = _hf(paligemma).robodual_config()
    old = {k: v for k, v in meta["model"].items() if k not in ("train_projector", "lora_scope")}
    model = HFVLMGeneralist.from_config({**meta, "model": old})
    t = _trainable(model)
    assert not t["full"] and any("multi_modal_projector" in n for n in t["lora"])
    assert to_dict(model.cfg)["lora_scope"] == "all"


@pytest.mark.hostile
def test_hf_vlm_unknown_lora_scope(paligemma):
    with pytest.raises(RobodualError, match="lora_scope"):
        _hf(paligemma, lora_scope="vision")


def test_run_config_shows_the_resolved_family():
    from robodual_generalist.commands import resolved_config

    cfg = {"model": {"base": "/m/smolvlm", "family": "auto", "tiny": {"image_size": 64}}, "trainer": {}}
    assert resolved_config(cfg, "hf_vlm")["model"] == {"base": "/m/smolvlm", "family": "hf_vlm"}
    tiny = {"model": {"base": "tiny", "family": "auto", "tiny": {"image_size": 64}}}
    assert resolved_config(tiny, "openvla")["model"] == {"base": "tiny", "family": "openvla", "tiny": {"image_size": 64}}
    assert resolved_config(cfg, "third_party") == cfg  # another family's config is its own


@pytest.mark.slow
def test_hf_vlm_run_config_json(paligemma, tmp_path, run):
    store = make_store(tmp_path / "store.zarr", episodes=1, steps=4, action_dim=3)
    out = tmp_path / "gen"
    args = ["train", "generalist", "--dataset", store, "--out", out, "--base", paligemma, "--steps", 1,
            "--set", "trainer.num_workers=0", "--set", "trainer.batch_size=2", "--set", "model.k_g=2",
            "--set", "model.lora_rank=4", "--set", "trainer.ckpt_every=1"]
    code, _, err = run(*args)
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["family"] == "hf_vlm" and "tiny" not in saved["model"]
    assert saved["model"]["train_projector"] is True and saved["model"]["freeze_vision"] is True
    code, _, err = run(*args[:-8], "--resume", "--steps", 2, *args[-8:])  # the resolved config resumes
    assert code == 0, err


def test_hf_vlm_extra_installs_num2words():
    import tomllib

    project = tomllib.loads((ROOT / "packages" / "robodual-generalist" / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("num2words") for r in project["optional-dependencies"]["hf-vlm"])
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the README moved its guides to docs/
    readme = "\n".join(p.read_text() for p in docs)
    assert "robodual-generalist[hf-vlm]" in readme and "LoRA on every linear layer" not in readme


# -- 4. bad --steps and a tiny vision tower too shallow for OpenVLA's layer ---------------------------------------
@pytest.mark.hostile
@pytest.mark.parametrize("command", ["generalist", "specialist"])
@pytest.mark.parametrize("steps", ["0", "-3"])
def test_steps_below_one_refused_at_the_flag(command, steps, run, tmp_path):
    """Refused before anything else: --overwrite does not get to delete the run folder first."""
    kept = tmp_path / "run" / "checkpoints" / "1"
    kept.mkdir(parents=True)
    code, _, err = run("train", command, "--dataset", tmp_path / "none.zarr", "--out", tmp_path / "run",
                       "--steps", steps, "--overwrite")
    assert code == 1 and err.startswith(f"error: --steps {steps}: config key 'trainer.steps' must be an integer >= 1")
    assert kept.is_dir()


@pytest.mark.hostile
@pytest.mark.parametrize("depth", [1, 0])
def test_tiny_vision_depth_below_two_refused_when_loaded(depth):
    from robodual_core.config import load_config
    from robodual_generalist.config import GeneralistTrainConfig

    with pytest.raises(RobodualError) as exc:
        load_config(GeneralistTrainConfig, None, [f"model.tiny.vision_depth={depth}"])
    assert "model.tiny.vision_depth" in _one_line(exc.value) and ">= 2" in str(exc.value)


@pytest.mark.hostile
def test_tiny_vision_depth_one_refused_before_training(run, tmp_path):
    store = make_store(tmp_path / "store.zarr", episodes=1, steps=4, action_dim=3)
    config = tmp_path / "gen.yaml"
    config.write_text("model: {tiny: {vision_depth: 1}}\n")
    start = time.perf_counter()
    code, _, err = run("train", "generalist", "--dataset", store, "--out", tmp_path / "gen", "--base", "tiny",
                       "--config", config)
    assert code == 1 and "model.tiny.vision_depth" in err and "block(s)" not in err, err
    assert not (tmp_path / "gen").exists() and time.perf_counter() - start < 30
