"""One path defines a policy: assembly of policies from checkpoints (DESIGN.md section 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError
from robodual_core.runtime.aggregation import AggregationConfig
from robodual_core.runtime.latency import LatencyConfig, parse_latency
from robodual_core.runtime.policies import DualSystemPolicy, GeneralistOnlyPolicy, SpecialistOnlyPolicy
from robodual_core.runtime.process import ProcessGeneralist
from robodual_core.runtime.runners import load_runner


def generalist_for_specialist(specialist_ckpt: str | Path, process: bool = False) -> Any | None:
    """The generalist runner a specialist checkpoint was trained with (``generalist.json``), or None.

    The runner reproduces what the specialist saw in training: the cache's latent pooling travels with it.
    With ``process`` it runs in its own process (:class:`ProcessGeneralist`).
    """
    from robodual_core.checkpoint import read_json, resolve_checkpoint

    ckpt = resolve_checkpoint(specialist_ckpt)
    if not (ckpt / "generalist.json").is_file():
        return None
    record = read_json(ckpt, "generalist")
    path = recorded_generalist(ckpt, record)
    options = {"pooling": record.get("pooling") or "none", "latent_dtype": record.get("dtype") or "float32"}
    if process:
        return ProcessGeneralist(path, **options)
    return load_runner("generalist", path, **options)


def recorded_generalist(ckpt: Path, record: dict[str, Any]) -> str:
    """The generalist checkpoint a specialist checkpoint's ``generalist.json`` names, checked against the hash
    recorded in training: a run folder that has since trained on (its latest checkpoint is another one) or
    weights changed in place would otherwise condition the specialist on outputs it never saw."""
    from robodual_core.data.generalist_cache import checkpoint_hash

    where = ckpt / "generalist.json"
    if not record.get("checkpoint"):
        raise RobodualError(f"'{where}' names no generalist checkpoint")
    path = str(record["checkpoint"])
    if not Path(path).is_absolute():  # a policy folder names its generalist relative to the specialist checkpoint
        path = str((ckpt / path).resolve())
    if record.get("hash"):
        found = checkpoint_hash(path)
        if found != record["hash"]:
            raise RobodualError(f"'{where}': the specialist was trained with generalist {record['hash']}, but "
                                f"'{path}' is now {found} (a run folder that trained on, or changed weights); "
                                "set 'checkpoint' there to the checkpoint folder it was trained with")
    return path


def standalone_generalist(path: str | Path) -> Path | None:
    """``path`` when it is a model folder (not a robodual run or checkpoint) that a registered generalist family
    recognizes: an OpenVLA-format checkpoint or a merged generalist; else None."""
    from robodual_core.checkpoint import latest_checkpoint
    from robodual_core.families import generalist_family_of

    p = Path(path)
    if not (p / "config.json").is_file() or (p / "model_config.json").is_file() or latest_checkpoint(p) is not None:
        return None
    try:
        generalist_family_of(p)
    except RobodualError:
        return None
    return p


def checkpoint_kind(path: str | Path) -> str:
    """'generalist' or 'specialist', from the checkpoint's model_config.json."""
    from robodual_core.checkpoint import read_checkpoint_meta
    from robodual_core.plugins import registry

    family = read_checkpoint_meta(path).get("family", "")
    if family in registry("specialists"):
        return "specialist"
    if family in registry("generalists"):
        return "generalist"
    raise RobodualError(f"checkpoint '{path}' has family '{family}', which no installed plugin registers "
                        f"(specialists: {registry('specialists').names()}, generalists: {registry('generalists').names()})")


def load_policy(path: str | Path, kind: str = "auto", mode: str = "sync",
                aggregation: AggregationConfig | None = None,
                latency: LatencyConfig | str | dict | None = None, unnorm_key: str | None = None,
                execute: int | None = None) -> Any:
    """One path defines a policy (DESIGN.md section 10).

    A specialist checkpoint that records a generalist (``generalist.json``) gives a dual-system policy,
    one without it a specialist-only policy; a generalist checkpoint gives a generalist-only policy.
    ``kind`` forces one of 'dual', 'specialist', 'generalist'. ``latency``: deterministic latency in control
    steps (:mod:`robodual_core.runtime.latency`; ``"generalist=16,specialist=2"`` or a :class:`LatencyConfig`).
    A model folder that a generalist family recognizes (an OpenVLA checkpoint, a merged generalist) gives a
    generalist-only policy (by default each action as predicted: no aggregation, no gripper threshold);
    ``unnorm_key`` picks the dataset of its ``norm_stats`` that unnormalizes actions. ``execute``: control steps
    between new chunks, of the specialist (default 1: a chunk every step) or of a generalist alone (default its
    chunk); with aggregation off, Diffusion Policy's "plan 16, execute 8".
    """
    if execute is not None and (isinstance(execute, bool) or not isinstance(execute, int) or execute < 1):
        raise RobodualError(f"--execute: expected a whole number of control steps >= 1, found {execute!r}")
    latency = parse_latency(latency)
    from robodual_core.checkpoint import read_json, resolve_checkpoint
    from robodual_core.hub import is_hub_ref, resolve_model_path
    from robodual_core.policy_manifest import is_policy_folder, verify_policy_folder

    if is_hub_ref(path):  # org/name[@rev]: a policy folder (or run) in the local Hugging Face cache
        path = resolve_model_path(path, what="--policy", folder_form="a policy, run or checkpoint folder")
    if is_policy_folder(path):
        verify_policy_folder(path)  # every file as exported (sha256), before any weight is read
    folder = None if is_policy_folder(path) else standalone_generalist(path)
    if folder is not None:
        if kind not in ("auto", "generalist"):
            raise RobodualError(f"'{path}' is a generalist model folder; it cannot make a '{kind}' policy")
        options = {"unnorm_key": unnorm_key} if unnorm_key is not None else {}
        # actions as the model gives them: OpenVLA's predict_action leaves the gripper unthresholded (in [0, 1]
        # for most of its datasets, where the default threshold at 0 would open it always)
        raw = AggregationConfig(enabled=False, binarize_gripper=False)
        return GeneralistOnlyPolicy(_checked(load_runner("generalist", folder, **options), execute, "k_g"), execute,
                                    aggregation=aggregation if aggregation is not None else raw, latency=latency)
    if unnorm_key is not None:
        raise RobodualError(f"--unnorm-key '{unnorm_key}' picks a dataset of an OpenVLA-format model folder's "
                            f"norm_stats; '{path}' is a robodual run or checkpoint, whose actions are unnormalized "
                            "with its own normalizer.json (leave --unnorm-key out)")
    ckpt = resolve_checkpoint(path)
    found = checkpoint_kind(ckpt)
    if found == "generalist":
        if kind not in ("auto", "generalist"):
            raise RobodualError(f"'{path}' is a generalist checkpoint; it cannot make a '{kind}' policy")
        return GeneralistOnlyPolicy(_checked(load_runner("generalist", ckpt), execute, "k_g"), execute,
                                    aggregation=aggregation, latency=latency)
    has_generalist = (ckpt / "generalist.json").is_file()
    if kind == "generalist":
        if not has_generalist:
            raise RobodualError(f"specialist checkpoint '{ckpt}' records no generalist")
        runner = load_runner("generalist", recorded_generalist(ckpt, read_json(ckpt, "generalist")))
        return GeneralistOnlyPolicy(_checked(runner, execute, "k_g"), execute, aggregation=aggregation,
                                    latency=latency)
    specialist = _checked(load_runner("specialist", ckpt), execute, "k_s")
    every = execute or 1
    if kind == "specialist" or (kind == "auto" and not has_generalist):
        return SpecialistOnlyPolicy(specialist, aggregation=aggregation, specialist_every=every, latency=latency)
    if not has_generalist:
        raise RobodualError(f"specialist checkpoint '{ckpt}' was trained without a generalist; it cannot make a "
                            "dual-system policy (train it with --generalist-cache)")
    # asynchronous mode puts the generalist in its own process: a thread would share the GIL with the specialist
    if mode == "async" and not latency.zero:
        raise RobodualError(f"--latency {latency.text()} is counted in control steps and needs --mode sync; async "
                            "mode runs on the wall clock")
    return DualSystemPolicy(generalist_for_specialist(ckpt, process=mode == "async"), specialist, mode=mode,
                            aggregation=aggregation, specialist_every=every, latency=latency)


def _checked(runner: Any, execute: int | None, horizon: str) -> Any:
    """``runner`` if its chunk (``k_s`` or ``k_g``) holds ``execute`` actions; the refusal names both."""
    length = getattr(runner, horizon, None)
    if execute is not None and isinstance(length, int) and execute > length:
        raise RobodualError(f"--execute {execute}: the policy's chunks hold {length} actions ({horizon}); expected "
                            f"1 to {length} control steps between new chunks")
    return runner
