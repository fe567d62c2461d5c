"""Hostile input to eval, bench and generate commands: every bad flag or path is refused in one line that names it.

Each case runs the real CLI entry point in this process; none needs a trained policy, because every flag is
checked before a policy, a store or a simulator is loaded.
"""

from __future__ import annotations

import pytest
from test_contract import cli

pytest.importorskip("metaworld")

pytestmark = pytest.mark.hostile


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "empty_run").mkdir()
    (root / "not_a_store").mkdir()
    (root / "not_a_store" / "README.txt").write_text("hello")
    (root / "a_file.zarr").write_text("not a folder")
    return root


def _cases():
    off = ["eval", "offline", "--policy", "{run}", "--dataset", "{junk}"]
    mw = ["eval", "metaworld", "--policy", "random", "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "2",
          "--videos", "0", "--out", "{tmp}/mw"]
    gen = ["dataset", "generate", "metaworld", "{tmp}/gen.zarr", "--tasks", "reach-v3", "--episodes-per-task", "1",
           "--image-size", "32"]
    rt = ["bench", "runtime", "--policy", "{run}", "--dataset", "{junk}", "--out", "{tmp}/rt.json"]
    bs = ["bench", "serve", "--policy", "{run}", "--dataset", "{junk}", "--out", "{tmp}/bs.json"]
    return [
        # eval offline
        ("offline-split", [*off, "--split", "test"], "--split"),
        ("offline-kind", [*off, "--kind", "tiny"], "--kind"),
        ("offline-max-episodes-0", [*off, "--max-episodes", "0"], "--max-episodes"),
        ("offline-max-episodes-neg", [*off, "--max-episodes", "-3"], "--max-episodes"),
        ("offline-val-ratio", [*off, "--val-ratio", "1.5"], "--val-ratio"),
        ("offline-max-episodes-type", [*off, "--max-episodes", "many"], "--max-episodes"),
        ("offline-missing-policy", ["eval", "offline", "--policy", "{tmp}/nope", "--dataset", "{junk}"], "nope"),
        ("offline-not-a-store", off, "not_a_store"),
        ("offline-store-is-a-file", ["eval", "offline", "--policy", "{run}", "--dataset", "{tmp}/a_file.zarr"],
         "a_file.zarr"),
        ("offline-missing-store", ["eval", "offline", "--policy", "{run}", "--dataset", "{tmp}/gone.zarr"],
         "gone.zarr"),
        # eval metaworld
        ("mw-episodes-neg", [*mw, "--episodes", "-1"], "--episodes"),
        ("mw-episodes-type", [*mw, "--episodes", "two"], "--episodes"),
        ("mw-unknown-task", [*mw, "--tasks", "reach-v3,juggle"], "juggle"),
        ("mw-no-task", [*mw, "--tasks", " , "], "--tasks"),
        ("mw-workers-0", [*mw, "--workers", "0"], "--workers"),
        ("mw-missing-policy", ["eval", "metaworld", "--policy", "{tmp}/nope", "--episodes", "1"], "nope"),
        ("mw-max-steps-0", [*mw, "--max-steps", "0"], "--max-steps"),
        ("mw-image-size", [*mw, "--image-size", "4"], "--image-size"),
        ("mw-videos-neg", [*mw, "--videos", "-2"], "--videos"),
        ("mw-kind", [*mw, "--kind", "both"], "--kind"),
        ("mw-mode", [*mw, "--mode", "fast"], "--mode"),
        ("mw-remote-url", [*mw, "--remote", "http://127.0.0.1:1"], "--remote"),
        ("mw-batch-0", [*mw, "--batch", "0"], "--batch"),
        ("mw-batch-remote", [*mw, "--batch", "2", "--remote", "ws://127.0.0.1:1"], "--batch 2"),
        ("mw-batch-async", [*mw, "--batch", "2", "--mode", "async"], "--mode async"),
        ("mw-batch-no-sessions", [*mw, "--batch", "2"], "no new_session"),
        ("mw-camera", [*mw, "--cameras", "corner2,nocam"], "nocam"),
        # dataset generate metaworld
        ("gen-episodes-neg", [*gen, "--episodes-per-task", "-1"], "--episodes-per-task"),
        ("gen-unknown-task", [*gen, "--tasks", "fly-v3"], "fly-v3"),
        ("gen-image-size", [*gen, "--image-size", "8"], "--image-size"),
        ("gen-max-steps-0", [*gen, "--max-steps", "0"], "--max-steps"),
        ("gen-max-attempts-0", [*gen, "--max-attempts", "0"], "--max-attempts"),
        ("gen-action-noise-nan", [*gen, "--action-noise", "nan"], "--action-noise"),
        ("gen-action-noise-neg", [*gen, "--action-noise", "-0.1"], "--action-noise"),
        ("gen-workers-0", [*gen, "--workers", "0"], "--workers"),
        ("gen-cameras-empty", [*gen, "--cameras", ","], "--cameras"),
        # bench runtime / bench serve
        ("runtime-steps-0", [*rt, "--steps", "0"], "--steps"),
        ("runtime-factors-text", [*rt, "--factors", "a,b"], "--factors"),
        ("runtime-factors-0", [*rt, "--factors", "0,4"], "--factors"),
        ("runtime-sessions-neg", [*rt, "--sessions", "-1"], "--sessions"),
        ("runtime-sessions-huge", [*rt, "--sessions", "100000"], "--sessions: expected at most 256"),
        ("runtime-sessions-257", [*rt, "--sessions", "257"], "--sessions: expected at most 256"),
        ("runtime-sessions-huge-synthetic", ["bench", "runtime", "--synthetic", "tiny", "--sessions", "100000",
                                             "--out", "{tmp}/rt.json"], "--sessions: expected at most 256"),
        ("runtime-missing-policy", ["bench", "runtime", "--policy", "{tmp}/nope", "--dataset", "{junk}"], "nope"),
        ("serve-bench-steps-neg", [*bs, "--steps", "-1"], "--steps"),
        ("serve-bench-mode", [*bs, "--mode", "turbo"], "--mode"),
        ("serve-bench-kind", [*bs, "--kind", "all"], "--kind"),
        ("serve-bench-missing-policy", ["bench", "serve", "--policy", "{tmp}/nope", "--dataset", "{junk}"], "nope"),
    ]


@pytest.mark.parametrize(("args", "needle"), [pytest.param(a, n, id=i) for i, a, n in _cases()])
def test_bad_flag_is_refused_in_one_line_naming_it(paths, args, needle):
    fill = {"run": paths / "empty_run", "junk": paths / "not_a_store", "tmp": paths}
    result = cli(*[a.format(**fill) for a in args], expect=None)
    assert result.code != 0, f"accepted: robodual {' '.join(args)}\n{result.stdout[-500:]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.stderr[-2000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr and "run with --debug" not in errors[0], \
        result.stderr[-2000:]
    assert needle in errors[0], errors[0]
    assert not (paths / "gen.zarr").exists()  # nothing half-written by a refused generate
