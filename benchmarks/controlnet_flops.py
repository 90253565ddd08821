"""What a Flux ControlNet adds to a denoising step at 1024x1024 (issue 18), in the terms of
``benchmarks.transformer_flops``: the ControlNet is built on the meta device from FLUX.1-dev's
shipped config with the block counts the published ControlNets have, and one forward on
the step's inputs (plus the control latents) is counted with ``torch.utils.flop_counter``.
Shapes only: no weights, nothing downloaded.

    python -m benchmarks.controlnet_flops [--side 1024]
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch
from diffusers import FluxControlNetModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backend.models.dit_controlnets import SHARED_CONFIG
from benchmarks.transformer_flops import FAMILIES, _step_inputs

# (double blocks, single blocks, union modes): the shapes Flux ControlNets come in
# (InstantX's union: 5 + 10 with modes; depth/canny ControlNets of 4-6 double blocks,
# with or without single blocks).
SHAPES = {"5 double + 10 single, union": (5, 10, 10), "4 double + 10 single": (4, 10, None),
          "6 double, union": (6, 0, 10)}


def controlnet_cost(double: int, single: int, modes: Optional[int],
                    side: int = 1024) -> dict[str, float]:
    """TFLOP of one Flux ControlNet call beside FLUX.1-dev at ``side``, and its parameters."""
    cls, config, _, _ = FAMILIES["flux1-dev"]
    with torch.device("meta"):
        controlnet = FluxControlNetModel(**{k: config[k] for k in SHARED_CONFIG},
                                         num_layers=double, num_single_layers=single,
                                         num_mode=modes)
        inputs = _step_inputs("flux1-dev", cls(**{**config, "num_layers": 1,
                                                  "num_single_layers": 1}), side)
        inputs["controlnet_cond"] = torch.zeros_like(inputs["hidden_states"])
        if modes is not None:
            inputs["controlnet_mode"] = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        controlnet(**inputs)
    params = sum(p.numel() for p in controlnet.parameters())
    return {"tflop_per_step": counter.get_total_flops() / 1e12, "params_billion": params / 1e9}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=1024)
    args = parser.parse_args(argv)
    print(f"Flux ControlNets, one call per step at {args.side}x{args.side}:")
    for label, shape in SHAPES.items():
        cost = controlnet_cost(*shape, side=args.side)
        print(f"  {label:28s} {cost['tflop_per_step']:6.1f} TFLOP  "
              f"{cost['params_billion']:5.2f} B parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
