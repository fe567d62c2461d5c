"""The specialist's whole control step on fixed buffers, captured once as a CUDA graph (issue 20).

At control-time batch sizes the GPU finishes each of the step's ~1000 kernels (four sensor encoders, the
generalist-latent projection, five DDIM steps with classifier-free guidance) long before Python launches the next,
so the step costs its launches, not its FLOPs. :class:`StaticControlStep` keeps every input and output in a buffer
allocated once per batch size and input signature, runs the step from those buffers, and on CUDA records it with
``torch.cuda.graph`` and replays it per control step (one launch). Nothing in the step reads a value back to the
host: the DDIM coefficients are Python floats (:class:`robodual_specialist.ddim.DDIMChain`), the history-frame
feature cache (whose hit test compares frames on the host) is off inside the step, and the generalist's task
tokens are padded to a fixed count with their mask off.

On the CPU the same code runs eagerly on the same buffers (what the CPU tests compare with ``DiTSpecialist.sample``);
``precision="bf16"`` runs the sensor encoders under bf16 autocast (the denoiser and DDIM stay fp32, as with
``model.inference_autocast``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from robodual_core.interfaces import GeneralistOutput

TOKEN_BUCKET = 32
_GEN_FIELDS = ("actions", "task_latents", "action_latents", "task_mask", "action_mask")


def _bucket(n: int) -> int:
    return max(TOKEN_BUCKET, -(-n // TOKEN_BUCKET) * TOKEN_BUCKET)


@contextlib.contextmanager
def frame_cache_off(model: Any) -> Iterator[None]:
    """The encoders' history-frame feature cache off (its hit test is a host-side comparison)."""
    saved = []
    for enc in model.sensors.values():
        cfg = getattr(enc, "cfg", None)
        if cfg is not None and hasattr(cfg, "cache_features"):
            saved.append((cfg, cfg.cache_features))
            cfg.cache_features = False
    try:
        yield
    finally:
        for cfg, value in saved:
            cfg.cache_features = value


def pad_generalist(gen: GeneralistOutput, task_tokens: int, action_tokens: int) -> GeneralistOutput:
    """Task and action latents padded with masked-off tokens to fixed counts (masked tokens change nothing)."""
    def pad(x: torch.Tensor, n: int) -> torch.Tensor:
        extra = n - x.shape[1]
        if extra < 0:
            raise ValueError(f"{x.shape[1]} generalist tokens do not fit the step's {n}")
        return x if extra == 0 else torch.cat([x, x.new_zeros(x.shape[0], extra, *x.shape[2:])], dim=1)

    return GeneralistOutput(gen.actions, pad(gen.task_latents, task_tokens), pad(gen.action_latents, action_tokens),
                            pad(gen.task_mask.bool(), task_tokens), pad(gen.action_mask.bool(), action_tokens))


def signature(batch: dict[str, Any], gen: GeneralistOutput | None) -> tuple[Any, ...]:
    """What a captured step is specialised to: batch size, observation shapes, generalist token buckets."""
    obs = tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in batch.get("obs", {}).items()))
    proprio = tuple(batch["proprio"].shape) if batch.get("proprio") is not None else None
    g = None
    if gen is not None:
        g = (tuple(gen.actions.shape), _bucket(gen.task_latents.shape[1]), _bucket(gen.action_latents.shape[1]),
             gen.task_latents.shape[-1])
    return obs, proprio, g


class StaticControlStep:
    """``step(batch, gen, noise=None) -> normalized actions [B, k_s, D]`` for one input signature.

    ``graph``: capture with ``torch.cuda.graph`` (None = on CUDA devices); ``precision``: "fp32" or "bf16".
    The language sensors (which read instruction strings) have no static form: models with one run eagerly
    (:meth:`supported`).
    """

    def __init__(self, model: Any, batch: dict[str, Any], gen: GeneralistOutput | None, device: torch.device,
                 graph: bool | None = None, precision: str = "fp32", steps: int | None = None,
                 guidance_scale: float | None = None):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision!r}; expected fp32 or bf16")
        self.model, self.device, self.precision = model, device, precision
        self.graph_enabled = device.type == "cuda" if graph is None else bool(graph)
        if self.graph_enabled and device.type != "cuda":
            raise ValueError("graph capture needs a CUDA device")
        self.signature = signature(batch, gen)
        self.chain = model.ddim_chain(steps or model.cfg.diffusion.inference_steps, device)
        self.scale = model.cfg.guidance.scale if guidance_scale is None else float(guidance_scale)
        self.obs = {k: torch.zeros_like(v, device=device) for k, v in batch.get("obs", {}).items()}
        B = next(iter(self.obs.values())).shape[0] if self.obs else batch["proprio"].shape[0]
        self.batch_size = B
        self.proprio = (torch.zeros_like(batch["proprio"], dtype=torch.float32, device=device)
                        if batch.get("proprio") is not None else None)
        self.tau = torch.zeros(B, dtype=torch.long, device=device)
        self.gen: GeneralistOutput | None = None
        if gen is not None:
            padded = pad_generalist(gen, self.signature[2][1], self.signature[2][2])
            self.gen = GeneralistOutput(*(torch.zeros_like(getattr(padded, f), device=device) for f in _GEN_FIELDS))
        self.noise = torch.zeros(B, model.cfg.k_s, model.cfg.action_dim, device=device)
        self.out = torch.zeros_like(self.noise)
        self._graph: Any = None
        self.captures = 0

    @staticmethod
    def supported(model: Any) -> bool:
        return all(not any(k in ("instruction", "task") for k in enc.keys) for enc in model.sensors.values())

    # -- the step ---------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def _run(self) -> None:
        """The control step from the buffers into ``self.out`` (the batched-CFG path of ``DiTSpecialist.sample``)."""
        model, gen, B = self.model, self.gen, self.batch_size
        batch: dict[str, Any] = {"obs": self.obs, "proprio": self.proprio, "tau": self.tau}
        with self._autocast():  # the encoders (most of the FLOPs); the denoiser stays fp32, as in sample()
            obs_tokens = model.encode_observation(batch).float()
        no_drop = torch.zeros(B, dtype=torch.bool, device=self.device)
        guided = self.scale > 0
        drops = (no_drop, ~no_drop) if guided else (no_drop,)
        tokens = model.condition_token_values(obs_tokens, gen)
        masks = [model.condition_mask(obs_tokens, gen, d) for d in drops]
        gen_in = torch.cat([model.generalist_action_input(gen, self.tau, B, d) for d in drops])
        c_obs = torch.cat([model.proprio_embedding(self.proprio, d) for d in drops])
        pre = (model.dit.precompute_pair(tokens, *masks) if guided else model.dit.precompute(tokens, masks[0]))
        mods = model.dit.modulations(self.chain.timesteps, c_obs)
        x = self.noise
        for i, t in enumerate(self.chain.timesteps):
            out = model.dit(x.repeat(len(drops), 1, 1), gen_in, t, c_obs, pre, mods=mods[i]).float()
            if guided:
                c, u = out.chunk(2, dim=0)
                out = u + self.scale * (c - u)
            x = self.chain.step(i, out, x)
        self.out.copy_(x)

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: cuBLAS/cuDNN handles, lazily built buffers (rotary tables, masks)
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._run()
        self._graph = graph
        self.captures += 1

    # -- a control step ---------------------------------------------------------------------------
    def load(self, batch: dict[str, Any], gen: GeneralistOutput | None, noise: torch.Tensor | None = None) -> None:
        for k, buf in self.obs.items():
            buf.copy_(batch["obs"][k], non_blocking=True)
        if self.proprio is not None:
            self.proprio.copy_(batch["proprio"], non_blocking=True)
        tau = batch.get("tau")
        if tau is None:
            self.tau.zero_()
        else:
            self.tau.copy_(torch.as_tensor(tau).reshape(-1).expand(self.batch_size), non_blocking=True)
        if self.gen is not None and gen is not None:
            for f in _GEN_FIELDS:  # into the buffers' leading rows; the padding rows stay masked off
                buf, x = getattr(self.gen, f), getattr(gen, f)
                n = x.shape[1]
                if n > buf.shape[1]:
                    raise ValueError(f"{n} generalist tokens do not fit the step's {buf.shape[1]}")
                buf[:, :n].copy_(x, non_blocking=True)
                buf[:, n:].zero_()
        if noise is None:
            self.noise.normal_()
        else:
            self.noise.copy_(noise, non_blocking=True)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, Any], gen: GeneralistOutput | None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        self.load(batch, gen, noise)
        with frame_cache_off(self.model):
            if self.graph_enabled and self._graph is None:
                try:
                    self._capture()
                except Exception as exc:  # an op the capture cannot record: run eagerly from now on
                    warnings.warn(f"CUDA graph capture of the specialist step failed ({type(exc).__name__}: "
                                  f"{exc}); running eagerly", RuntimeWarning, stacklevel=2)
                    self.graph_enabled = False
                    torch.cuda.synchronize(self.device)
            if self._graph is not None:
                self._graph.replay()
            else:
                self._run()
        return self.out.clone()


class StepPool:
    """Captured steps by input signature (batch size, shapes, token buckets), a few kept."""

    def __init__(self, limit: int = 4):
        self.limit = limit
        self._steps: dict[tuple[Any, ...], StaticControlStep] = {}

    def get(self, model: Any, batch: dict[str, Any], gen: GeneralistOutput | None, device: torch.device,
            **options: Any) -> StaticControlStep:
        key = (signature(batch, gen), tuple(sorted(options.items())))
        step = self._steps.get(key)
        if step is None:
            if len(self._steps) >= self.limit:
                self._steps.pop(next(iter(self._steps)))
            step = self._steps[key] = StaticControlStep(model, batch, gen, device, **options)
        return step
