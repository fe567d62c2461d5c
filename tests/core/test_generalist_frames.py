"""The generalist's frames go through the kernel's preprocessing too (issue 28, part 2): what its model receives
for a stored frame is the same tensor, bit for bit, from the training loader (WindowDataset), the cache writer
(load_images) and the runtime (GeneralistModelRunner). Dividing by 255 instead of multiplying by float32(1/255)
differs in the last bit for about half of the 256 pixel values."""

import numpy as np
import torch
from torch import nn

from robodual_core.data import DatasetWriter, Normalizer, WindowDataset, open_dataset
from robodual_core.data.generalist_cache import load_images
from robodual_core.interfaces import GeneralistOutput
from robodual_core.runtime.runners import GeneralistModelRunner

T = 4


class RecordingGeneralist(nn.Module):
    k_g, action_dim, image_key = 2, 3, "rgb_static"

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def generate(self, batch):
        x = batch["obs"][self.image_key]
        self.seen.append(x.clone())
        b = x.shape[0]
        ones = torch.ones(b, 1, dtype=torch.bool)
        return GeneralistOutput(torch.zeros(b, self.k_g, self.action_dim), torch.zeros(b, 1, 4), torch.zeros(b, 1, 4),
                                ones, ones.clone())


def test_loader_cache_and_runtime_give_the_generalist_the_same_frames(tmp_path):
    frames = np.arange(T * 16 * 12 * 3, dtype=np.int64).reshape(T, 16, 12, 3) % 256  # every pixel value
    frames = frames.astype(np.uint8)
    path = tmp_path / "s.zarr"
    with DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "action": "action"},
                       action_space={"dim": 3}) as w:
        w.add_episode({"rgb_static": frames, "action": np.zeros((T, 3), np.float32)}, instruction="go", task="go")
    ds = WindowDataset(path, obs_keys=["rgb_static"], horizon=2, k_g=2, image_size=None, split="all",
                       augment_tau=False)
    served = torch.stack([ds[i]["obs"]["rgb_static"] for i in range(T)])
    cached = load_images(open_dataset(path).array("rgb_static"), 0, T)
    model = RecordingGeneralist()
    runner = GeneralistModelRunner(model, Normalizer({}))
    for t in range(T):
        runner.predict({"rgb_static": frames[t]}, "go")
    at_control = torch.cat(model.seen)
    assert served.dtype == cached.dtype == at_control.dtype == torch.float32
    assert torch.equal(cached, served)
    assert torch.equal(at_control, served)
    assert not torch.equal(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0, served)  # the old path
