"""`robodual bench generalist` runs end to end (few repeats) and writes every measurement it promises."""

import json

import pytest


@pytest.mark.slow
def test_bench_generalist_writes_its_report(tmp_path):
    from robodual_cli.app import main

    out = tmp_path / "bench.json"
    try:
        main(["bench", "generalist", "--out", str(out), "--repeats", "1", "--train-steps", "2", "--threads", "1"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    results = json.loads(out.read_text())["results"]
    rows = {(r["batch"], r["what"], r["decoding"]): r for r in results["decode"]}
    assert set(rows) == {(b, w, d) for b in (1, 8) for w in ("chunk", "single_action")
                         for d in ("static", "dynamic", "recompute")}
    assert all(r["chunk_latency_s"] > 0 and r["action_tokens_per_s"] > 0 for r in rows.values())
    assert rows[(1, "single_action", "static")]["tokens"] == 7  # OpenVLA's single action: 7 tokens, no separator
    assert rows[(1, "chunk", "static")]["tokens"] > 7
    assert results["cache_vs_online"]["speedup"] > 1
    lora = results["lora_training"]
    assert lora["tokens_per_s"] > 0 and lora["flop_per_step"] > 0 and 0 < lora["trainable_params"] < lora["params"]
    t = results["specialist_training"]
    assert t["cache_steps_per_s"] > 0 and t["online_steps_per_s"] > 0
    assert t["speedup"] == pytest.approx(t["cache_steps_per_s"] / t["online_steps_per_s"])
    assert t["pooling"] == "step" and len(t["cache_step_s"]) == len(t["online_step_s"]) == 2
    assert len(t["cache_per_tensor_step_s"]) == 2 and t["flat_params_speedup"] > 0
    assert t["generalist_source"]["cache"]["online"] is False and t["generalist_source"]["online"]["online"] is True
    # the online step splits into the generalist's inference (timed inside it) and the specialist's step
    assert 0 < t["online_generalist_s"] < max(t["online_step_s"]) and t["online_specialist_s"] > 0
    assert t["params"]["generalist"] > 0 and t["params"]["specialist_trainable"] > 0
    # a generalist larger than the specialist steps in the same rotation
    big = t["larger_generalist"]
    assert big["params"]["generalist"] > t["params"]["generalist"]
    assert len(big["cache_step_s"]) == len(big["online_step_s"]) == 2 and big["online_generalist_s"] > 0
