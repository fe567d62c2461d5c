"""The native generalist families' runtime adapter: the kernel's :class:`GeneralistModelRunner`, loaded through
the family's model class (one observation in, one :class:`GeneralistOutput` out, pooled as the cache was).

An OpenVLA-format folder (a stock OpenVLA checkpoint, or one ``robodual generalist merge`` wrote) turns actions
into robot units with the statistics its ``config.json`` ``norm_stats`` records for ``unnorm_key`` (OpenVLA's
``predict_action``: q99 bounds, masked dimensions left normalized, float64); a merged folder without a key uses
its run's ``normalizer.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.runtime.runners import GeneralistModelRunner


class VLARunner(GeneralistModelRunner):
    """For :mod:`robodual_core.runtime` and online conditioning of specialist training
    (``robodual train specialist --generalist RUN``)."""

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", pooling: str = "none", latent_dtype: str = "float32",
             model_cls: Any = None, unnorm_key: str | None = None) -> VLARunner:
        """``pooling`` must be the one of the cache the specialist was trained on (its generalist.json);
        ``model_cls`` is the generalist family's class (its ``load_runner`` passes itself); ``unnorm_key`` the
        dataset of an OpenVLA-format folder's ``norm_stats`` that unnormalizes actions."""
        from robodual_generalist.prismatic import is_openvla_dir, read_openvla_config

        path = Path(path)
        if is_openvla_dir(path):
            if model_cls is None:  # the family's load_runner passes its class (no import back into model.py)
                raise RobodualError(f"VLARunner.load('{path}'): an OpenVLA-format folder needs model_cls, the "
                                    "generalist family's class; load it through the family's load_runner")
            config = read_openvla_config(path)
            normalizer = policy_normalizer(path, config, unnorm_key)  # a wrong key fails before the weights load
            options = {"unnorm_key": unnorm_key} if unnorm_key is not None else {}
            model = model_cls.from_checkpoint(path, device=device, **options)
            return cls(model, normalizer, {}, pooling=pooling, latent_dtype=latent_dtype)
        if unnorm_key is not None:
            raise RobodualError(f"unnorm_key (--unnorm-key) '{unnorm_key}' names a dataset of an OpenVLA checkpoint's "
                                f"norm_stats; '{path}' is not an OpenVLA-format folder (a robodual run, checkpoint or "
                                "Hugging Face VLM folder), whose actions are unnormalized with its own normalizer.json "
                                "(leave the key out)")
        loader = model_cls.from_checkpoint if model_cls is not None else None
        return super().load(path, loader, device=device, pooling=pooling, latent_dtype=latent_dtype)

    def actions_to_env(self, actions: Any) -> Any:
        """Normalized actions ``[k_g, D]`` -> robot units, float64: bin centres are OpenVLA's float64 centres
        (the float32 the model hands out is mapped back to them) and unnormalized in float64, so a stock
        OpenVLA checkpoint gives ``predict_action``'s numbers exactly."""
        a = actions.detach().cpu().numpy() if hasattr(actions, "detach") else np.asarray(actions)
        exact = self.model.action_tokenizer.exact_centres(a)
        return np.asarray(self.normalizer.unnormalize("action", exact), dtype=np.float64)


def policy_normalizer(path: Path, config: dict[str, Any], unnorm_key: str | None) -> Any:
    """The action normalizer of an OpenVLA-format folder: ``norm_stats[unnorm_key]`` (mask-aware), or, with no
    key, the run's ``normalizer.json`` of a merged folder (else the one dataset of ``norm_stats``)."""
    import json

    from robodual_core.data import Normalizer
    from robodual_generalist.norm_stats import openvla_normalizer

    file = path / "normalizer.json"
    if unnorm_key is None and file.is_file():
        try:
            return Normalizer.from_dict(json.loads(file.read_text()))
        except json.JSONDecodeError as exc:
            raise RobodualError(f"'{file}' is not valid JSON: {exc}") from None
    if unnorm_key is None and not config.get("norm_stats"):
        raise RobodualError(f"model folder '{path}' has no normalizer.json and no norm_stats, which the policy needs "
                            "to turn actions into dataset units; merge from a training run (`robodual generalist "
                            "merge RUN OUT` writes it) or copy the run's normalizer.json beside its config.json")
    return openvla_normalizer(config, unnorm_key, path)
