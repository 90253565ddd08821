"""What a model predicts (noise or v) and how its noise schedule ends, so that every
job's scheduler samples it the way it was trained.

- A diffusers folder says so in ``scheduler/scheduler_config.json`` (``prediction_type``,
  ``rescale_betas_zero_snr``, ``timestep_spacing``).
- A single-file checkpoint cannot: the community convention (NoobAI-XL v-pred, reForge,
  ComfyUI) is an empty ``v_pred`` tensor in the file, and ``ztsnr`` for a model trained
  with zero terminal SNR; A1111's older one is a ``.yaml`` beside the checkpoint, same
  stem, whose ``parameterization: "v"`` marks v-prediction (SD2.x 768-v).

Zero terminal SNR needs ``rescale_betas_zero_snr=True`` and trailing timesteps (the
schedule must reach the pure-noise step); plain v-prediction (SD2.x) keeps its schedule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .file_kinds import read_header
from .sources import GGUF_SUFFIX, ModelSource

PredictionType = Literal["epsilon", "v_prediction"]
_YAML_V = re.compile(r"^\s*parameterization:\s*['\"]?v['\"]?\s*$", re.MULTILINE)
YAML_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Prediction:
    prediction_type: PredictionType = "epsilon"
    zero_terminal_snr: bool = False

    def scheduler_config(self) -> dict[str, Any]:
        """Scheduler settings over the model's own config; empty for a plain model."""
        config: dict[str, Any] = {}
        if self.prediction_type != "epsilon":
            config["prediction_type"] = self.prediction_type
        if self.zero_terminal_snr:
            config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
        return config


def _yaml_says_v(checkpoint: Path) -> bool:
    yaml = checkpoint.with_suffix(".yaml")
    try:
        if not yaml.is_file() or yaml.stat().st_size > YAML_MAX_BYTES:
            return False
        return bool(_YAML_V.search(yaml.read_text("utf-8", errors="replace")))
    except OSError:
        return False


def single_file_prediction(path: Path) -> Prediction:
    keys = read_header(path).shapes
    ztsnr = "ztsnr" in keys
    v_pred = "v_pred" in keys or _yaml_says_v(path)
    return Prediction("v_prediction" if v_pred else "epsilon", ztsnr)


def prediction_of(source: ModelSource, scheduler_config: dict[str, Any]) -> Prediction:
    """The model's prediction: a single file's markers, else its scheduler config (which
    the loaded scheduler already carries; repeated so that every sampler gets it). GGUF
    files are flow-matching transformers: their scheduler says all."""
    if source.kind == "single_file" and source.path.suffix.lower() != GGUF_SUFFIX:
        return single_file_prediction(source.path)
    kind = scheduler_config.get("prediction_type", "epsilon")
    return Prediction("v_prediction" if kind == "v_prediction" else "epsilon",
                      bool(scheduler_config.get("rescale_betas_zero_snr", False)))
