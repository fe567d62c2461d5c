"""``robodual eval offline``: action error of a policy on held-out episodes of a dataset.

The policy is driven exactly as in closed loop (reset per episode, one ``step`` per recorded frame,
temporal aggregation included), but observations come from the recorded episode, so the error says
how well it imitates the demonstrations without a simulator.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from robodual_cli.console import err, out
from robodual_core.cli_groups import group
from robodual_core.errors import RobodualError
from robodual_core.tracking import LOG_HELP, log_eval, parse_log, tell

KINDS = ("auto", "dual", "specialist", "generalist")
MODES = ("sync", "async")


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RobodualError(f"{flag}: expected one of {', '.join(choices)}, found '{value}'")


def check_min(flag: str, value: float, low: float, what: str = "") -> None:
    if not value >= low:
        raise RobodualError(f"{flag}: expected {what or 'a number'} >= {low:g}, found {value}")


def check_policy_dir(flag: str, path: Path) -> None:
    if not Path(path).is_dir():
        raise RobodualError(f"{flag}: '{path}' is not a folder; expected a training run folder (with checkpoints/) "
                            "or a checkpoint folder")


def observation_keys(ds, policy=None) -> list[str]:
    """The store keys to feed a policy as observations.

    The keys of the policy's ``observation_spec`` (what it was trained on) when it declares one, each of which
    must be in the store; otherwise every store key but the actions (``NON_OBSERVATION_KEYS`` and keys of
    modality ``action``).
    """
    from robodual_core.data.store import NON_OBSERVATION_KEYS

    spec = list(getattr(policy, "observation_spec", None) or {})
    if spec:
        missing = [k for k in spec if k not in ds.keys]
        if missing:
            raise RobodualError(f"dataset '{ds.path}' lacks the observation key(s) {', '.join(missing)} the policy "
                                f"needs; found keys: {', '.join(ds.keys) or '(none)'}")
        return spec
    modalities = ds.modalities
    keys = [k for k in ds.keys if k not in NON_OBSERVATION_KEYS and modalities.get(k) != "action"]
    if not keys:
        raise RobodualError(f"dataset '{ds.path}' has no observation keys; found keys: {', '.join(ds.keys) or '(none)'}")
    return keys


def offline_eval(policy_path: Path, dataset: Path, split: str, kind: str, max_episodes: int, val_ratio: float,
                 seed: int, out_dir: Path, unnorm_key: str | None = None) -> dict:
    import numpy as np
    from rich.progress import Progress

    from robodual_core.data import open_dataset
    from robodual_core.data.sampler import split_episodes
    from robodual_core.io import atomic_write_json
    from robodual_core.runtime import load_policy

    ds = open_dataset(dataset)
    if "action" not in ds.keys:
        raise RobodualError(f"dataset '{dataset}' has no 'action' key; found keys: {', '.join(ds.keys)}")
    episodes = split_episodes(ds.num_episodes, split, val_ratio, seed)[:max_episodes]
    if len(episodes) == 0:
        raise RobodualError(f"split '{split}' of '{dataset}' has no episodes (val_ratio={val_ratio})")
    policy = load_policy(policy_path, kind=kind, unnorm_key=unnorm_key)
    obs_keys = observation_keys(ds, policy)
    preds, truths, first = [], [], None
    t0 = time.perf_counter()
    with Progress(console=err) as bar:
        task = bar.add_task("offline evaluation", total=len(episodes))
        for ep in episodes:
            data = ds.episode(int(ep), obs_keys + ["action"])
            _check_finite(data, dataset, int(ep))
            instruction = ds.instructions[int(ep)]
            policy.reset()
            ep_pred = np.stack([policy.step({k: data[k][t] for k in obs_keys}, instruction)
                                for t in range(len(data["action"]))])
            _check_finite({"the policy's actions": ep_pred}, dataset, int(ep))
            preds.append(ep_pred)
            truths.append(np.asarray(data["action"], dtype=np.float32))
            if first is None:
                first = (int(ep), ep_pred, truths[-1])
            bar.advance(task)
    close = getattr(policy, "close", None)
    if callable(close):
        close()
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    err_ = pred - truth
    result = {
        "policy": str(policy_path), "dataset": str(dataset), "split": split, "episodes": [int(e) for e in episodes],
        "steps": int(len(pred)),
        "l1_per_dim": np.abs(err_).mean(0).tolist(), "mse_per_dim": (err_ ** 2).mean(0).tolist(),
        "l1": float(np.abs(err_).mean()), "mse": float((err_ ** 2).mean()),
        "gripper_accuracy": float(((pred[:, -1] > 0) == (truth[:, -1] > 0)).mean()),
        "policy_steps_per_s": len(pred) / (time.perf_counter() - t0),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", result)
    _plot(out_dir / "actions.png", *first)
    return result


def _check_finite(arrays: dict, dataset: Path, episode: int) -> None:
    """An error over a NaN or Inf is not a result: refuse, naming the key, episode and step (a store damaged after
    it was validated, or a policy that diverges)."""
    import numpy as np

    for key, values in arrays.items():
        x = np.asarray(values)
        if x.dtype.kind not in "fc" or np.isfinite(x).all():
            continue
        step = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0])
        what = key if key.startswith("the policy") else f"data/{key} of '{dataset}'"
        raise RobodualError(f"{what} holds NaN or Inf at episode {episode}, step {step}; expected finite values "
                            f"(run `robodual dataset validate {dataset}`)")


def _plot(path: Path, episode: int, pred, truth) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = truth.shape[1]
    fig, axes = plt.subplots(dims, 1, figsize=(7, 1.6 * dims), sharex=True, squeeze=False)
    for d in range(dims):
        ax = axes[d, 0]
        ax.plot(truth[:, d], label="recorded", color="k")
        ax.plot(pred[:, d], label="predicted", color="tab:orange")
        ax.set_ylabel(f"a[{d}]")
    axes[0, 0].legend(loc="upper right")
    axes[0, 0].set_title(f"episode {episode}: predicted vs recorded actions")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    ev = group(app, "eval")

    @ev.command("offline")
    def offline(
        policy: Path = typer.Option(..., "--policy", help="Run folder or checkpoint folder."),
        dataset: Path = typer.Option(..., "--dataset", help="Zarr store with the episodes to compare against."),
        split: str = typer.Option("val", "--split", help="train, val or all (split by episode, as in training)."),
        kind: str = typer.Option("auto", "--kind", help="auto, dual, specialist or generalist."),
        unnorm_key: str | None = typer.Option(None, "--unnorm-key",
                                              help="Dataset of an OpenVLA checkpoint's norm_stats whose statistics "
                                                   "turn its actions into robot units (predict_action's unnorm_key; "
                                                   "needed when it holds several)."),
        max_episodes: int = typer.Option(20, "--max-episodes", help="At most this many episodes."),
        val_ratio: float = typer.Option(0.1, "--val-ratio", help="Share of episodes held out (as in training)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the train/val split (as in training)."),
        out_dir: Path | None = typer.Option(None, "--out", help="Result folder (default RUN/eval/offline)."),
        json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
        log: list[str] = typer.Option([], "--log", help=LOG_HELP),
    ) -> None:
        """Action error (L1/MSE per dimension, gripper accuracy) on held-out episodes, with a plot."""
        trackers = parse_log(log)
        check_choice("--split", split, ("train", "val", "all"))
        check_choice("--kind", kind, KINDS)
        check_min("--max-episodes", max_episodes, 1, "a number of episodes")
        if not 0.0 <= val_ratio < 1.0:
            raise RobodualError(f"--val-ratio: expected a share of episodes in [0, 1) (as in training), found "
                                f"{val_ratio}")
        from robodual_core.hub import cached_policy

        snapshot = cached_policy(policy, out_dir)  # org/name[@rev]: a policy in the local Hugging Face cache
        policy = snapshot or policy
        check_policy_dir("--policy", policy)
        target = out_dir or Path(policy) / "eval" / "offline"
        from robodual_core.outputs import check_output

        # a folder apart from the dataset; inside the policy's run folder (the default) but never it or above it
        check_output(target, flag="--out", expect="folder", inputs=[dataset], hosts=[policy])
        result = offline_eval(policy, dataset, split, kind, max_episodes, val_ratio, seed, target, unnorm_key)
        # validation: the held-out action error, logged in the policy's run at its checkpoint's step
        tell(log_eval(trackers, None if snapshot else policy, target, {k: v for k, v in result.items() if k not in ("policy", "dataset")},
                      f"offline_{split}"))
        if json_out:
            out.print_json(json.dumps(result))
            return
        table = Table(title=f"offline action error ({result['steps']} steps, {len(result['episodes'])} episodes)")
        table.add_column("dim", justify="right")
        table.add_column("L1", justify="right")
        table.add_column("MSE", justify="right")
        for d, (l1, mse) in enumerate(zip(result["l1_per_dim"], result["mse_per_dim"], strict=True)):
            table.add_row(str(d), f"{l1:.4f}", f"{mse:.5f}")
        table.caption = f"gripper accuracy {result['gripper_accuracy']:.1%}; results and plot in {target}"
        out.print(table)
