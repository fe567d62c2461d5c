"""`robodual bench specialist`'s timing core on a tiny model with the paper's sensor layout: every variant is
timed, and the FLOP counts show what each switch saves."""

import warnings

import pytest
import torch

from robodual_specialist.bench import VARIANTS, ControlLoop, denoise_flops, fake_generalist, time_variants
from robodual_specialist.config import SensorConfig, SpecialistConfig
from robodual_specialist.model import DiTSpecialist

VIT = {"backbone": "vit", "image_size": 32, "width": 32, "depth": 1, "heads": 2, "head_dim": 16}


@pytest.fixture(scope="module")
def setup():
    sensors = [SensorConfig("rgb_static", {**VIT, "history": 1, "trainable": False}),
               SensorConfig("depth_static", VIT), SensorConfig("rgb_gripper", VIT), SensorConfig("depth_gripper", VIT)]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DiTSpecialist(SpecialistConfig(hidden=32, depth=2, heads=2, generalist_dim=16, action_dim=7,
                                               proprio_dim=7, sensors=sensors)).eval()
    loop = ControlLoop(model, 1, fake_generalist(1, 24, 16, model.cfg.k_g, 7), size=32)
    return model, loop, loop.resampler_fn()


def test_every_variant_is_timed_and_flops_show_the_savings(setup):
    model, loop, obs_fn = setup
    out = time_variants(model, loop, VARIANTS, repeats=2, obs_fn=obs_fn)
    assert set(out) == set(VARIANTS)
    for row in out.values():
        assert row["n"] == 2 and row["control_step_ms"] > 0 and row["encoders_ms"] > 0 and row["denoising_ms"] > 0
    flops = {name: denoise_flops(model, loop, opts, obs_fn) for name, opts in VARIANTS.items()}
    base = flops["optimized_fp32"]
    assert flops["no_kv_cache"] > base and flops["no_adapter_cache"] > base and flops["all_off"] > base
    # the frozen history frame is re-encoded without the frame cache
    assert out["no_frame_cache"]["gflop_per_step"] > out["optimized_fp32"]["gflop_per_step"]


def test_static_step_is_timed_beside_eager(setup):
    from robodual_specialist.bench import time_static_step

    model, loop, _ = setup
    out = time_static_step(model, loop, repeats=2, precisions=("fp32",))
    assert set(out) == {"eager_optimized", "static_fp32"}
    row = out["static_fp32"]
    assert row["n"] == 2 and row["control_step_ms"] > 0 and row["graph"] is False  # no CUDA here
    assert row["vs_eager_optimized"] == pytest.approx(row["control_step_ms"] / out["eager_optimized"]["control_step_ms"])


def test_gpu_limits_and_floors():
    from robodual_core.bench import GPU_DATASHEETS, compute_floor_ms, gpu_limits, memory_floor_ms

    assert gpu_limits() is None or gpu_limits()["name"]
    h200 = {"bandwidth_tb_s": GPU_DATASHEETS["H200"][0], "bf16_tflop_s": GPU_DATASHEETS["H200"][1]}
    assert memory_floor_ms(13.5e9, h200) == pytest.approx(2.8125)  # a 7B bf16 model read once per token
    assert compute_floor_ms(26.5e9, h200) == pytest.approx(26.5 / 989)
    assert memory_floor_ms(1.0, None) is None and compute_floor_ms(1.0, {}) is None


@pytest.mark.hostile
@pytest.mark.parametrize("value, needle", [("8", "expected 1 among the sizes"), ("1,x", "comma-separated integers"),
                                           ("1,0", "expected integers >= 1, found 0"), (",", "at least one")])
def test_bad_batch_sizes_are_one_line_before_any_model_is_built(tmp_path, value, needle):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "robodual_cli.app", "bench", "specialist", "--quick",
                          "--batch-sizes", value, "--out", str(tmp_path / "spec.json")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "--batch-sizes" in line and needle in line, res.stderr
    assert not (tmp_path / "spec.json").exists()
