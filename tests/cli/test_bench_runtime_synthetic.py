"""`robodual bench runtime --synthetic`: the dual system's rates with freshly built models (the GPU issue's
7B setting, here at its CPU-sized preset), and its bad flags."""

import json

import pytest

from robodual_cli.app import main


def _run(args):
    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_synthetic_dual_system_rates(tmp_path):
    out = tmp_path / "rt.json"
    assert _run(["bench", "runtime", "--synthetic", "tiny", "--steps", "4", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["results"]
    for key in ("generalist_chunk_s", "specialist_step_ms", "specialist_only_hz", "dual_async_hz"):
        assert r[key] > 0, key
    assert r["dual_async_vs_specialist_only"] == pytest.approx(r["dual_async_hz"] / r["specialist_only_hz"])
    assert r["dual_async_calls"]["generalist_calls"] >= 1 and r["dual_async_calls"]["specialist_calls"] >= 4
    assert r["generalist_params"] > 0 and r["specialist_params"] > 0 and r["device"] == "cpu"


@pytest.mark.hostile
@pytest.mark.parametrize("args, needle", [
    (["--synthetic", "huge"], "--synthetic"),
    (["--synthetic", "tiny", "--policy", "runs/x"], "without --policy"),
    ([], "--policy RUN and --dataset STORE"),
    (["--synthetic", "tiny", "--steps", "0"], "--steps"),
])
def test_synthetic_bad_flags_are_one_line(args, needle, tmp_path, capsys):
    code = _run(["bench", "runtime", *args, "--out", str(tmp_path / "rt.json")])
    err = capsys.readouterr().err
    assert code != 0 and needle in err and "Traceback" not in err
    assert not (tmp_path / "rt.json").exists()
