"""Control-time adapter of the DiT specialist for robodual_core.runtime (``SpecialistRunner``).

``predict(observation, instruction, generalist, tau)`` takes one step's raw numpy observation (HWC uint8
images, HW depth, ``proprio`` vector), keeps the history frames the sensors need (the first step of an
episode repeats its frame, as the training windows do), runs the encoders once, denoises with guidance
and returns the action chunk ``[k_s, D]`` in dataset units.

Every frame goes through the kernel's preprocessing before an encoder sees it
(``robodual_core.data.preprocess.prepare_observation`` with the run's ``Preprocessing`` and normalizer): the
tensor the training loader served for the same stored frame, whatever the sensor plugin does or does not do.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistOutput
from robodual_specialist.graphed import StaticControlStep, StepPool


class DiTRunner:
    def __init__(self, model: Any, device: str | torch.device | None = None,
                 observation_spec: dict[str, tuple[tuple[int, ...], str]] | None = None):
        self.model = model.eval()
        self.action_dim = model.cfg.action_dim
        self.observation_spec = observation_spec or {}
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.k_s = model.cfg.k_s
        self._steps = StepPool()  # static control steps by input signature (per session: their own buffers)
        self._frames: dict[str, deque] = {}
        # per camera key, the sensor with the most history frames: its tensor serves every sensor on that key
        # (each keeps the frames it uses, as in training, where every key gets the longest history)
        self._by_key: dict[str, Any] = {}
        for enc in model.sensors.values():
            if all(k in ("instruction", "task") for k in enc.keys):
                continue  # language sensors read batch["instruction"]
            key = enc.keys[0]
            if key not in self._by_key or _history(enc) > _history(self._by_key[key]):
                self._by_key[key] = enc

    def fork(self) -> DiTRunner:
        """A runner sharing this one's model with its own history frames (one per robot session)."""
        return DiTRunner(self.model, self.device, self.observation_spec)

    def reset(self) -> None:
        self._frames.clear()
        self.model.reset()

    def observe(self, observation: dict[str, np.ndarray]) -> None:
        """Record this control step's frames in the history buffers (once per key and step). ``predict`` does it
        itself; the runtime calls this on the steps the specialist does not run (``specialist_every > 1``), so
        a history frame is the previous control step's, as in the training windows."""
        for key, enc in self._by_key.items():
            history = _history(enc)
            if not history or key not in observation:
                continue  # predict names a missing key
            frame = np.asarray(observation[key])
            buf = self._frames.setdefault(key, deque(maxlen=history + 1))
            if not buf:
                buf.extend([frame] * history)  # the first step of an episode repeats its frame
            buf.append(frame)

    def _sensor_tensor(self, enc: Any, observation: dict[str, np.ndarray]) -> torch.Tensor:
        key = enc.keys[0]
        if key not in observation:
            raise RobodualError(f"sensor '{getattr(enc, 'name', key)}' reads observation key '{key}'; the "
                                f"observation has {', '.join(sorted(observation))}")
        history = _history(enc)
        if history:
            arr, lead = np.stack(list(self._frames[key]))[None], 2  # [1, history + 1, ...], oldest first
        else:
            arr, lead = np.asarray(observation[key])[None], 1
        return self._preprocess(enc, key, arr, lead).to(self.device)

    def _preprocess(self, enc: Any, key: str, arr: np.ndarray, lead: int) -> torch.Tensor:
        """The kernel's preprocessing of ``key`` (the loader's: modality, ``data.image_size``, normalizer). A model
        that no trainer or checkpoint gave a ``Preprocessing`` (a freshly built one) uses the sensor's declared
        ``modality``, or one guessed from the frame, at the frame's own size."""
        from robodual_core.data.preprocess import guess_modality, prepare_observation

        spec = self.model.preprocessing
        if spec is not None and key in spec.modalities:
            modality, size = spec.modalities[key], spec.image_size
        else:
            modality = getattr(enc, "modality", None) or guess_modality(arr[(0,) * lead])
            size = None
        normalizer = self.model.normalizer
        if modality == "depth" and normalizer is None:
            raise RobodualError(f"sensor '{getattr(enc, 'name', key)}': depth '{key}' needs the dataset normalizer "
                                "(the checkpoint's normalizer.json); this model has none")
        return prepare_observation(arr, key, modality, normalizer, size, lead=lead)

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """The initial diffusion noise of one prediction: ``(1, k_s, action_dim)``."""
        return (1, self.k_s, self.action_dim)

    @property
    def wants_prefix(self) -> bool:
        """Whether the model does real-time chunking (``model.rtc``): the runtime then passes the committed prefix
        (:class:`robodual_core.runtime.PrefixSpecialistRunner`)."""
        cfg = getattr(self.model.cfg, "rtc", None)
        return bool(cfg is not None and (cfg.inference or cfg.training))

    def predict(self, observation: dict[str, np.ndarray], instruction: str, generalist: GeneralistOutput | None,
                tau: int, prefix: Any = None) -> np.ndarray:
        return self.predict_prepared([self.prepare(observation, instruction, generalist, tau, prefix=prefix)])[0]

    def prepare(self, observation: dict[str, np.ndarray], instruction: str, generalist: GeneralistOutput | None,
                tau: int, prefix: Any = None) -> tuple[dict[str, Any], GeneralistOutput | None]:
        """This step's model input, a batch of one (and the step's frames recorded in this session's history):
        :meth:`predict_prepared` runs any number of them, from any sessions of this model, as one batch."""
        model = self.model
        self.observe(observation)
        batch: dict[str, Any] = {"obs": {}, "instruction": [instruction], "tau": torch.tensor([int(tau)])}
        for key, enc in self._by_key.items():
            batch["obs"][key] = self._sensor_tensor(enc, observation)
        if model.cfg.proprio_dim > 0:
            if "proprio" not in observation:
                raise RobodualError("the specialist conditions on 'proprio' but the observation has none "
                                    f"(keys: {', '.join(sorted(observation))})")
            p = np.asarray(observation["proprio"], dtype=np.float32).reshape(1, -1)
            if p.shape[1] != model.cfg.proprio_dim:
                raise RobodualError(f"observation 'proprio' has {p.shape[1]} values; this specialist was trained "
                                    f"on {model.cfg.proprio_dim}")
            if model.normalizer is not None and "proprio" in model.normalizer.entries:
                p = model.normalizer.normalize("proprio", p)
            batch["proprio"] = torch.as_tensor(np.asarray(p, dtype=np.float32), device=self.device)
        if self.wants_prefix:  # real-time chunking: the committed prefix, normalized, with its weights
            from robodual_specialist.rtc import prepare_prefix

            batch.update(prepare_prefix(prefix, self.k_s, self.action_dim, model.normalizer, self.device))
        gen = generalist.to(self.device) if generalist is not None and model.cfg.generalist_dim > 0 else None
        return batch, gen

    @torch.no_grad()
    def predict_prepared(self, prepared: list[tuple[dict[str, Any], GeneralistOutput | None]],
                         noise: list[torch.Tensor] | None = None) -> list[np.ndarray]:
        """Action chunks ``[k_s, D]`` in dataset units, one per :meth:`prepare` output, from one batched
        denoising. ``noise``: each one's initial noise (:attr:`noise_shape`); default the global torch RNG."""
        model = self.model
        batch = _merge([b for b, _ in prepared])
        gens = [g for _, g in prepared]
        if any(g is None for g in gens) and not all(g is None for g in gens):
            raise RobodualError("predict_prepared: either every prepared step has a generalist output or none has")
        gen = None if gens[0] is None else gens[0] if len(gens) == 1 else GeneralistOutput.concat(gens)
        if "rtc_target" in batch:  # real-time chunking runs in the eager loop (the static step has no prefix)
            x = model.sample(batch, gen, noise=None if noise is None else torch.cat(noise).to(self.device))
        elif noise is None or self.static_step_enabled():
            x = self._sample(batch, gen)
        else:
            x = model.sample(batch, gen, noise=torch.cat(noise).to(self.device))
        out = []
        for actions in x.float().cpu().numpy():
            if model.normalizer is not None and "action" in model.normalizer.entries:
                actions = model.normalizer.unnormalize("action", actions)
            out.append(np.asarray(actions, dtype=np.float32))
        return out

    def static_step_enabled(self) -> bool:
        """Whether control steps run on static buffers (``model.static_step``; auto = on CUDA)."""
        setting = getattr(self.model.cfg, "static_step", "auto")
        wanted = setting == "on" or (setting == "auto" and self.device.type == "cuda")
        return wanted and StaticControlStep.supported(self.model)

    def _sample(self, batch: dict[str, Any], gen: GeneralistOutput | None) -> torch.Tensor:
        if not self.static_step_enabled():
            return self.model.sample(batch, gen)
        precision = getattr(self.model.cfg, "static_precision", "auto")
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        step = self._steps.get(self.model, batch, gen, self.device, precision=precision)
        return step(batch, gen)


def _merge(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """One-row model inputs (:meth:`DiTRunner.prepare`) stacked along the batch."""
    if len(batches) == 1:
        return batches[0]
    merged: dict[str, Any] = {"obs": {k: torch.cat([b["obs"][k] for b in batches]) for k in batches[0]["obs"]},
                              "instruction": [i for b in batches for i in b["instruction"]],
                              "tau": torch.cat([b["tau"] for b in batches])}
    if "proprio" in batches[0]:
        merged["proprio"] = torch.cat([b["proprio"] for b in batches])
    for key in ("rtc_target", "rtc_weights", "rtc_hard"):  # real-time chunking's prefix (robodual_specialist.rtc)
        if key in batches[0]:
            merged[key] = torch.cat([b[key] for b in batches])
    return merged


def _history(enc: Any) -> int:
    return int(getattr(enc, "history", 0) or 0)
