"""Meta-World distribution shifts for generalization studies: lighting (visual) and wider placements."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("metaworld")

from robodual_core.errors import RobodualError
from robodual_envs.metaworld.env import MetaWorldEnv


def frame(visual, seed=3, task="push-v3"):
    with MetaWorldEnv(task, image_size=32, cameras=("corner2",), visual=visual, max_steps=5) as env:
        obs = env.reset(seed=seed)
        return obs.arrays["rgb_static"].astype(np.int32), obs.arrays["state"]


def test_visual_shift_changes_pixels_not_the_scene():
    default, state = frame("default")
    shifted, shifted_state = frame("shift")
    np.testing.assert_array_equal(state, shifted_state)  # same placement, only the lighting differs
    assert np.abs(shifted - default).mean() > 2
    again, _ = frame("default")
    np.testing.assert_array_equal(again, default)  # a reused simulator returns to the default lighting


def test_visual_random_is_per_episode_and_seeded():
    a, _ = frame("random", seed=1)
    b, _ = frame("random", seed=2)
    a2, _ = frame("random", seed=1)
    np.testing.assert_array_equal(a, a2)
    assert np.abs(a - b).mean() > 0.5
    # the shift lies inside the random range: a corpus with random lighting covers it
    from robodual_envs.metaworld.env import SHIFT_LIGHT

    gain = np.asarray(SHIFT_LIGHT)
    assert 0.6 * 0.8 <= gain.min() and gain.max() <= 1.4 * 1.2


def test_placement_scale_widens_the_reset_space():
    def placements(scale):
        with MetaWorldEnv("push-v3", image_size=16, cameras=("corner2",), placement_scale=scale) as env:
            return np.array([env.reset(seed=s).arrays["state"][4:6] for s in range(40)])  # the object's xy

    base, wide = placements(1.0), placements(1.5)
    span = lambda p: p.max(0) - p.min(0)  # noqa: E731
    assert (span(wide) > 1.3 * span(base)).all()
    outside = (wide < base.min(0) - 1e-6) | (wide > base.max(0) + 1e-6)
    assert outside.any(axis=1).sum() >= 5  # placements no default-range episode can have


@pytest.mark.hostile
@pytest.mark.parametrize("kwargs, needle", [({"visual": "dark"}, "visual"), ({"placement_scale": 0}, "placement_scale"),
                                            ({"placement_scale": float("nan")}, "placement_scale")])
def test_bad_shift_options_are_refused(kwargs, needle):
    with pytest.raises(RobodualError, match=needle):
        MetaWorldEnv("push-v3", image_size=16, **kwargs)


def test_eval_cli_records_the_shift(tmp_path, run):
    out = tmp_path / "eval"
    code, cap = run("eval", "metaworld", "--policy", "random", "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "3",
        "--image-size", "32", "--videos", "0", "--out", str(out), "--visual", "shift", "--placement-scale", "1.25")
    assert code == 0, cap.err
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["visual"] == "shift" and settings["placement_scale"] == 1.25
