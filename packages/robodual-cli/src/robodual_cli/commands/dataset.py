"""``robodual dataset ...`` and ``robodual bench loader``.

Commands: ``info``, ``stats``, ``validate``, ``view``, ``split``, ``merge`` and the ``convert`` sub-group.

How a converter adds its command to ``robodual dataset convert``: register the converter class in the
``dataset_converters`` registry (``robodual_register_dataset_converters``) and give the class an
``add_command(convert_group, name)`` static method that adds one Typer command called ``name`` with the
converter's own options (see ``robodual_envs.calvin.convert.add_command``). The converter's module is
imported when the CLI is built, so it must import only light modules at module level (numpy, typer,
robodual_core; never torch or zarr). A converter class without ``add_command`` gets a generic command
``SRC DST [--overwrite] [--resume] [--set key=value ...]`` that calls ``convert(src, dst, **options)``.
A converter that fails to import is shown as a command that reports the error.

Heavy libraries (zarr, numpy, torch, matplotlib) are imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from robodual_cli.console import err, out
from robodual_core.cli_groups import group
from robodual_core.errors import RobodualError


def register(app: typer.Typer) -> None:
    ds = group(app, "dataset")
    ds.command("info")(info)
    ds.command("stats")(stats)
    ds.command("validate")(validate)
    ds.command("view")(view)
    ds.command("split")(split)
    ds.command("merge")(merge)
    convert = typer.Typer(help="Convert a source dataset into a robodual Zarr store (one command per converter).",
                          no_args_is_help=True)
    ds.add_typer(convert, name="convert")
    _add_converters(convert)
    group(app, "bench").command("loader")(bench_loader)


# -- convert -----------------------------------------------------------------------------------------
def _add_converters(convert: typer.Typer) -> None:
    from robodual_core.plugins import registry

    for entry in registry("dataset_converters").entries():
        try:
            cls = entry.load()
        except Exception as exc:
            _add_broken(convert, entry.name, f"{type(exc).__name__}: {exc}")
            continue
        add = getattr(cls, "add_command", None)
        if callable(add):
            add(convert, entry.name)
        else:
            _add_generic(convert, entry.name, cls, entry.description)


def _add_broken(convert: typer.Typer, name: str, error: str) -> None:
    @convert.command(name, help=f"(unavailable: {error})", context_settings={"allow_extra_args": True,
                                                                              "ignore_unknown_options": True})
    def broken() -> None:
        raise RobodualError(f"dataset converter '{name}' cannot be loaded: {error}")


def _add_generic(convert: typer.Typer, name: str, cls: Any, description: str) -> None:
    @convert.command(name, help=description or f"Convert with the '{name}' converter.")
    def generic(
        src: Path = typer.Argument(..., help="Source dataset."),
        dst: Path = typer.Argument(..., help="Output Zarr store."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST when the new store is complete."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted conversion."),
        sets: list[str] = typer.Option([], "--set", help="Converter option key=value (JSON values), repeatable."),
    ) -> None:
        from robodual_core.outputs import check_output

        # a third-party converter gets the same guard as the built-in ones: DST is never SRC, inside it or
        # holding it, and --overwrite replaces only a robodual store
        check_output(dst, flag="DST", expect="store", inputs=[src], overwrite=overwrite)
        options: dict[str, Any] = {}
        for item in sets:
            key, sep, value = item.partition("=")
            if not sep:
                raise RobodualError(f"--set '{item}': expected key=value")
            try:
                options[key] = json.loads(value)
            except json.JSONDecodeError:
                options[key] = value
        path = cls().convert(src, dst, overwrite=overwrite, resume=resume, **options)
        out.print(f"wrote {path}")


# -- info / stats / validate -------------------------------------------------------------------------
def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def info(
    path: Path = typer.Argument(..., help="A robodual Zarr store."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Episodes, steps, fps, per key shape, dtype, chunks, compressor and bytes on disk, and the generalist caches
    (each with the generalist checkpoint folder it came from and that checkpoint's date)."""
    import numpy as np
    from rich.table import Table

    from robodual_core.data import open_dataset
    from robodual_core.data.generalist_cache import cache_entries, describe_cache

    ds = open_dataset(path, require_complete=False)
    keys = []
    for key in ds.keys:
        arr = ds.array(key)
        comp = ", ".join(_codec_name(c) for c in arr.compressors) or "none"
        raw = int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize
        keys.append({"key": key, "modality": ds.modalities.get(key, "?"), "shape": list(arr.shape),
                     "dtype": str(arr.dtype), "chunks": list(arr.chunks),
                     "shards": list(arr.shards) if arr.shards else None, "compressor": comp,
                     "bytes": raw, "bytes_on_disk": _dir_bytes(ds.path / "data" / key)})
    summary = {"path": str(ds.path), "complete": ds.complete, "schema_version": ds.schema_version,
               "episodes": ds.num_episodes, "steps": ds.num_steps, "fps": ds.fps,
               "instructions": len(set(ds.instructions)), "tasks": len(set(ds.tasks)),
               "size_on_disk": _dir_bytes(ds.path), "action_space": ds.action_space, "keys": keys,
               "generalist_caches": cache_entries(ds.path)}
    if json_out:
        print(json.dumps(summary))
        return
    lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
    out.print(f"[bold]{ds.path}[/]  schema v{ds.schema_version}  "
              f"{'[green]complete[/]' if ds.complete else '[red]NOT complete[/]'}")
    out.print(f"episodes {ds.num_episodes}  steps {ds.num_steps}  fps {ds.fps:g}  "
              f"episode length min/mean/max {lengths.min() if lengths.size else 0}/"
              f"{lengths.mean() if lengths.size else 0:.1f}/{lengths.max() if lengths.size else 0}  "
              f"size on disk {_human(summary['size_on_disk'])}")
    out.print(f"distinct instructions {summary['instructions']}  distinct tasks {summary['tasks']}")
    if ds.action_space:
        out.print(f"action space: {json.dumps(ds.action_space)}")
    table = Table()
    table.add_column("key", no_wrap=True)
    for col in ("modality", "shape", "dtype", "chunking", "compressor"):
        table.add_column(col)
    table.add_column("bytes", justify="right")
    table.add_column("on disk", justify="right")
    for k in keys:
        chunking = f"{k['chunks'][0]}/chunk"
        if k["shards"]:
            chunking += f", {k['shards'][0]}/shard"
        table.add_row(k["key"], k["modality"], "x".join(map(str, k["shape"])), k["dtype"], chunking,
                      k["compressor"], _human(k["bytes"]), _human(k["bytes_on_disk"]))
    out.print(table)
    caches = summary["generalist_caches"]
    out.print(f"generalist caches {len(caches)}" + (" (--generalist-cache takes a hash or the folder)" if caches else ""),
              markup=False, highlight=False)
    for entry in caches:
        cached = (entry["cached"] or "?").replace("T", " ").replace("+00:00", " UTC")
        out.print(f"  {describe_cache(entry)}, cached {cached}, pooling {entry['pooling']}, {entry['dtype']}",
                  markup=False, highlight=False, soft_wrap=True)


def _codec_name(codec: Any) -> str:
    cname = getattr(codec, "cname", None)
    level = getattr(codec, "clevel", None)
    name = type(codec).__name__.replace("Codec", "").lower()
    return f"{name}/{getattr(cname, 'value', cname)}:{level}" if cname is not None else name


def stats(
    path: Path = typer.Argument(..., help="A robodual Zarr store."),
    recompute: bool = typer.Option(False, "--recompute", help="Recompute from the low-dim arrays and store them."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Normalization statistics (min, max, mean, std, q01, q99) per key."""
    import zarr
    from rich.table import Table

    from robodual_core.data import compute_stats, open_dataset

    ds = open_dataset(path)
    values = ds.stats
    if recompute:
        with err.status("computing statistics"):
            values, how = compute_stats(ds.root, ds.modalities)
        root = zarr.open_group(str(ds.path), mode="r+")
        root.attrs.update({"stats": values, "stats_info": how})
    if json_out:
        print(json.dumps(values))
        return
    if not values:
        out.print("no statistics stored (run with --recompute)")
        return
    table = Table(title=f"statistics of {ds.path}{' (recomputed)' if recompute else ''}")
    table.add_column("key")
    table.add_column("dim", justify="right")
    for field in ("min", "max", "mean", "std", "q01", "q99"):
        table.add_column(field, justify="right")
    for key, entry in sorted(values.items()):
        for d in range(len(entry["min"])):
            table.add_row(key if d == 0 else "", str(d), *(f"{entry[f][d]:.4g}" for f in
                                                           ("min", "max", "mean", "std", "q01", "q99")))
    out.print(table)


def validate(
    path: Path = typer.Argument(..., help="A robodual Zarr store."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
    quick: bool = typer.Option(False, "--quick",
                               help="Only the checks run whenever a store is opened (metadata, lengths, every chunk "
                                    "file on disk); skip decoding every chunk and the NaN/Inf scan."),
    full: bool = typer.Option(False, "--full", help="Decode every chunk of every array (the default; overrides "
                                                    "--quick)."),
) -> None:
    """List every problem of a store (schema, lengths, every chunk present and decodable, NaN/Inf, statistics);
    exit 1 if there is one."""
    from robodual_core.data.validate import store_notes, validate_store

    scan = full or not quick
    with err.status(f"validating {path}"):
        problems = validate_store(path, scan_values=scan, full=scan)
        notes = store_notes(path)
    if json_out:
        print(json.dumps({"path": str(path), "valid": not problems, "problems": problems, "full": scan,
                          "notes": notes}))
    elif problems:
        out.print(f"[red]{path}: {len(problems)} problem(s)[/]")
        for p in problems:
            out.print(f"  - {p}", markup=False, highlight=False)
    else:
        out.print(f"[green]{path}: valid[/]{'' if scan else ' (quick checks; run without --quick to decode every chunk)'}")
    if not json_out:
        for note in notes:
            err.print(f"note: {note}", markup=False, highlight=False)
    if problems:
        # SystemExit, not typer.Exit: click returns typer.Exit's code under standalone_mode=False (app.main)
        raise SystemExit(1)


# -- view ---------------------------------------------------------------------------------------------
def view(
    path: Path = typer.Argument(..., help="A robodual Zarr store."),
    episode: int = typer.Option(0, "--episode", "-e", help="Episode index."),
    output: Path = typer.Option(Path("episode.png"), "--output", "-o", help="Image file to write (.png/.jpg/.pdf)."),
    frames: int = typer.Option(6, "--frames", help="Frames per camera row, evenly spaced over the episode."),
) -> None:
    """Camera frames across an episode and its action/proprio curves, for a person to look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from robodual_core.data import open_dataset
    from robodual_core.io import atomic_write_bytes
    from robodual_core.outputs import check_output

    if frames < 1:
        raise RobodualError(f"--frames: expected a number of frames >= 1, found {frames}")
    check_output(output, flag="--output", expect="file", inputs=[path])
    fmt = output.suffix.lstrip(".").lower() or "png"
    if fmt not in plt.gcf().canvas.get_supported_filetypes():
        plt.close("all")
        raise RobodualError(f"--output '{output}': expected an image file ending in .png, .jpg or .pdf, found "
                            f"'.{fmt}'")
    plt.close("all")
    ds = open_dataset(path, require_complete=False)
    start, end = ds.episode_bounds(episode)
    length = end - start
    steps = np.unique(np.linspace(0, length - 1, min(frames, length)).round().astype(int))
    image_keys = [k for k in ds.keys if ds.modalities.get(k) in ("rgb", "depth", "tactile")]
    curve_keys = [k for k in ("action", "proprio") if k in ds.keys]
    rows = len(image_keys) + len(curve_keys)
    if rows == 0:
        raise RobodualError(f"'{path}' has no image, action or proprio keys to show")
    fig = plt.figure(figsize=(2.2 * max(len(steps), 4), 2.2 * len(image_keys) + 2.6 * len(curve_keys)))
    grid = fig.add_gridspec(rows, len(steps))
    for r, key in enumerate(image_keys):
        arr = ds.array(key)
        for c, s in enumerate(steps):
            ax = fig.add_subplot(grid[r, c])
            img = np.asarray(arr[start + int(s)])
            if img.ndim == 3 and img.shape[2] not in (1, 3):  # several images side by side in channels
                per = 3 if ds.modalities[key] != "depth" and img.shape[2] % 3 == 0 else 1
                img = np.concatenate([img[..., i:i + per] for i in range(0, img.shape[2], per)], axis=1)
            img = img.squeeze(-1) if img.ndim == 3 and img.shape[2] == 1 else img
            ax.imshow(img, cmap="viridis" if img.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(key, fontsize=8)
            if r == 0:
                ax.set_title(f"t={int(s)}", fontsize=8)
    for i, key in enumerate(curve_keys):
        ax = fig.add_subplot(grid[len(image_keys) + i, :])
        values = np.asarray(ds.array(key)[start:end]).reshape(length, -1)
        for d in range(values.shape[1]):
            ax.plot(values[:, d], label=str(d), linewidth=1)
        ax.set_ylabel(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=min(values.shape[1], 10), loc="upper right")
    fig.suptitle(f"{ds.path.name} episode {episode} ({length} steps): {ds.instructions[episode]!r} "
                 f"[{ds.tasks[episode]}]", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100)
    plt.close(fig)
    atomic_write_bytes(output, buf.getvalue())
    out.print(f"wrote {output}")


# -- split / merge --------------------------------------------------------------------------------------
def _parse_episodes(spec: str, n: int) -> list[int]:
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        a, sep, b = part.partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise RobodualError(f"--val-episodes item '{part}': expected N or N-M") from None
        # bounds first: a range is expanded only within the store's episodes (0-999999999999 is refused, not
        # built in memory)
        if not (0 <= lo < n and 0 <= hi < n):
            raise RobodualError(f"--val-episodes item '{part}' reaches outside episodes 0..{n - 1}")
        if lo > hi:
            raise RobodualError(f"--val-episodes item '{part}': expected N-M with N <= M")
        ids.extend(range(lo, hi + 1))
    return sorted(set(ids))


def _progress(total: int, description: str):
    """The one robodual progress bar (robodual_core.progress) counting episodes."""
    from robodual_core.progress import progress_bar

    bar = progress_bar(unit="episodes")
    task = bar.add_task(description, total=total)
    return bar, (lambda n: bar.advance(task, n))


def split(
    src: Path = typer.Argument(..., help="A robodual Zarr store."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for train.zarr and val.zarr."),
    val_ratio: float = typer.Option(0.1, "--val-ratio", help="Fraction of episodes held out (seeded)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the episode shuffle (same as WindowDataset's split)."),
    val_episodes: str = typer.Option("", "--val-episodes", help="Explicit held-out episodes, e.g. '0,5,10-12'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Split a store by episode into OUT/train.zarr and OUT/val.zarr."""
    import numpy as np

    from robodual_core.data import open_dataset, split_episodes
    from robodual_core.data.ops import copy_episodes
    from robodual_core.outputs import check_output

    ds = open_dataset(src)
    if val_episodes:
        val = np.array(_parse_episodes(val_episodes, ds.num_episodes), dtype=np.int64)
    else:
        val = split_episodes(ds.num_episodes, "val", val_ratio, seed)
    train = np.setdiff1d(np.arange(ds.num_episodes), val)
    if len(train) == 0 or len(val) == 0:
        raise RobodualError(f"split of {ds.num_episodes} episodes gives {len(train)} train and {len(val)} val "
                            "episodes; expected both non-empty (adjust --val-ratio or --val-episodes)")
    for name in ("train.zarr", "val.zarr"):  # both checked before either is written
        if (out_dir / name).exists() and not overwrite:
            raise RobodualError(f"'{out_dir / name}' already exists; pass --overwrite to replace it")
        check_output(out_dir / name, flag="--out", expect="store", inputs=[ds.path], overwrite=overwrite)
    bar, advance = _progress(ds.num_episodes, "splitting")
    with bar:
        paths = [copy_episodes([(ds, ids)], out_dir / name, overwrite=overwrite, progress=advance)
                 for name, ids in (("train.zarr", train), ("val.zarr", val))]
    out.print(f"wrote {paths[0]} ({len(train)} episodes) and {paths[1]} ({len(val)} episodes)")


def merge(
    sources: list[Path] = typer.Argument(..., help="Two or more robodual Zarr stores with the same keys."),
    dst: Path = typer.Option(..., "--out", help="The merged store to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Concatenate the episodes of several stores (same keys, shapes, dtypes and fps) into one."""
    from robodual_core.data import open_dataset
    from robodual_core.data.ops import merge_stores
    from robodual_core.outputs import check_output

    check_output(dst, flag="--out", expect="store", inputs=sources, overwrite=overwrite)
    total = sum(open_dataset(s).num_episodes for s in sources)
    bar, advance = _progress(total, "merging")
    with bar:
        path = merge_stores(sources, dst, overwrite=overwrite, progress=advance)
    out.print(f"wrote {path} ({total} episodes from {len(sources)} stores)")


# -- bench ------------------------------------------------------------------------------------------------
def bench_loader(
    data: list[Path] = typer.Option([], "--data", help="Store to read, repeatable (default: a synthetic store shaped "
                                    "like the demo's, 2 RGB at 128, and a synthetic paper-setting store)."),
    out_file: Path = typer.Option(Path("bench_loader.json"), "--out", help="JSON report to write."),
    workers: str = typer.Option("0,1,2,auto", "--workers", help="Comma-separated num_workers settings (a count or "
                                "auto), timed in turn."),
    batch_size: int = typer.Option(32, "--batch-size"),
    seconds: float = typer.Option(1.0, "--seconds", help="Timed seconds per setting and round."),
    rounds: int = typer.Option(5, "--rounds", help="Rounds of the settings in turn (the median is reported)."),
    busy: bool = typer.Option(True, "--busy/--no-busy", help="Also time every setting beside a busy core (a "
                              "busy-loop process)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also time the loader before issue "
                                   "33: a plain 0-worker DataLoader at torch's default threads, and the first batch "
                                   "when each worker reads the store."),
    image_size: int = typer.Option(None, "--image-size", help="Resize frames in the loader (default: as stored)."),
    episodes: int = typer.Option(8, "--episodes", help="Episodes of the synthetic paper-setting store."),
    consumption: float = typer.Option(None, "--consumption-samples-per-s",
                                      help="Specialist training rate to compute the loader/training ratio."),
    notes: str = typer.Option(None, "--notes", help="Text kept in the report (the machine's load, say)."),
    model_step: bool = typer.Option(True, "--model-step/--no-model-step", help="Also time a small model's "
                                    "training step at one thread per core and at the load-aware thread count."),
) -> None:
    """Samples/s of the window loader per num_workers setting (0, 1, 2, auto) side by side, quiet and beside a
    busy core: 2 RGB 224x224, 2 depth, proprio, 8-step chunk by default, or the stores given."""
    import tempfile

    from robodual_core.bench import write_report
    from robodual_core.data.bench_loader import (
        demo_like_store,
        loader_comparison,
        model_step_comparison,
        synthetic_store,
    )

    settings = tuple(w.strip().lower() for w in workers.split(",") if w.strip())
    if not settings:
        raise RobodualError(f"--workers is '{workers}'; expected comma-separated counts or auto (0,1,2,auto)")
    for s in settings:
        if s != "auto" and (not s.isdigit() or int(s) > 256):
            raise RobodualError(f"--workers item '{s}': expected auto or an integer in [0, 256]")
    if seconds <= 0 or rounds < 1 or batch_size < 1:
        raise RobodualError(f"--seconds ({seconds}), --rounds ({rounds}) and --batch-size ({batch_size}): expected "
                            "> 0, >= 1 and >= 1")
    conditions = ("quiet", "busy") if busy else ("quiet",)
    stores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="robodual-bench-") as tmp:
        paths = {(p.name if [q.name for q in data].count(p.name) == 1 else f"{i}_{p.name}"): p
                 for i, p in enumerate(data)}
        if not data:
            with err.status("writing synthetic stores"):
                paths = {"demo_like": demo_like_store(Path(tmp) / "demo_like.zarr"),
                         "paper_setting": synthetic_store(Path(tmp) / "paper.zarr", episodes=episodes)}
        with err.status("measuring loader throughput") as status:
            for name, path in paths.items():
                stores[name] = loader_comparison(path, settings, conditions, batch_size=batch_size,
                                                 image_size=image_size, rounds=rounds, round_seconds=seconds,
                                                 baselines=baselines, progress=status.update)
                if not data:
                    stores[name]["store"] = f"synthetic {name} ({stores[name]['episodes']} episodes, removed after " \
                                            "the run)"
        steps = None
        if model_step:
            with err.status("measuring the model step's threads") as status:
                steps = model_step_comparison(conditions, rounds=min(rounds, 3), round_seconds=seconds,
                                              progress=status.update)
    first = next(iter(stores.values()))
    quiet = first["conditions"]["quiet"]["samples_per_s"]
    runs = [{"num_workers": s, "samples_per_s": quiet[s]} for s in settings]
    ratio = quiet["2"] / consumption if consumption and "2" in quiet else None
    results = {  # the first store, quiet, at the top (as before), every store and condition under "stores"
        "store": first["store"], "episodes": first["episodes"], "steps": first["steps"], "window": first["window"],
        "runs": runs, "samples_per_s": {s: quiet[s] for s in settings},
        "consumption_samples_per_s": consumption, "ratio_workers2_over_consumption": ratio,
        "stores": stores, "model_step": steps, "notes": notes,
    }
    write_report(out_file, "loader", results)
    for name, r in stores.items():
        for condition, c in r["conditions"].items():
            rates = ", ".join(f"{k} {v:.0f}" for k, v in c["samples_per_s"].items())
            chose = f" (auto: {c['auto']['num_workers']} workers)" if c.get("auto") else ""
            out.print(f"{name}, {condition}: samples/s by num_workers: {rates}{chose}")
            g = r.get("goals", {}).get(condition, {})
            if g.get("auto_choice_over_best_fixed") is not None:
                noise = g.get("auto_timed_over_same_fixed")
                out.print(f"  auto's choice at {g['auto_choice_over_best_fixed']:.2f}x the best fixed setting"
                          + (f" (auto's own loader, the same setting timed again: {noise:.2f}x it)" if noise else ""))
    for condition, c in (steps or {}).get("conditions", {}).items():
        rates = ", ".join(f"{k} {v:.1f}" for k, v in c["steps_per_s"].items())
        out.print(f"model step, {condition}: steps/s {rates} (load-aware threads {c['load_aware_threads']})")
    if ratio is not None:
        out.print(f"loader (2 workers) / training consumption = {ratio:.2f}")
    out.print(f"wrote {out_file}")
