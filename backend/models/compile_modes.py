"""The ``torch.compile`` choices a daemon can be started with (``serve --compile``).

Torch-free, so the command line can offer them without importing torch.

- ``auto``: compile the UNet and VAE decoder on a CUDA GPU (inductor's default mode), not
  elsewhere.
- ``off``: never compile (eager PyTorch; starts fastest, for debugging a broken toolchain).
- an inductor mode: compile on any device with that mode. ``reduce-overhead`` adds CUDA
  graphs to the UNet (and ControlNet), which remove the per-kernel launch cost that dominates
  small batches on fast GPUs; the VAE decoder gets the mode without graphs;
  ``max-autotune`` also searches matmul/conv kernels (a much longer first load).
"""

from __future__ import annotations

AUTO = "auto"
OFF = "off"
# inductor's modes (torch.compile(mode=...))
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
CHOICES = (AUTO, OFF, *COMPILE_MODES)
