"""Super-resolution models (ESRGAN, Real-ESRGAN, SwinIR, ... "upscalers"): which file a
job's upscaler name means, and loading it as a network.

Files come from the folders users already keep them in: A1111's ``models/ESRGAN`` (and
its ``RealESRGAN``, ``SwinIR``, ``DAT`` siblings), ComfyUI's ``models/upscale_models``,
inside any ``--models-dir``, and ``$ATELIER_HOME/upscale_models``. Names resolve like
LoRAs (``sources.ModelRoots``: symlinks resolved, nothing outside the roots): ``NAME``,
``NAME.safetensors``, either inside an upscaler folder. Only ``.safetensors`` loads;
``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin`` files (how most upscalers are shared) are pickles,
and unpickling runs whatever code the file carries, so they are refused with a message
saying how to convert them.

The architecture is recognised from the tensor names by spandrel (the library ComfyUI
and chaiNNer use), never by networks written here. spandrel needs torchvision built for
the installed torch; it is an optional dependency (``pip install atelier[upscalers]``),
imported only when a job names an upscaler, and a daemon without it says so in the
job's error while Lanczos upscaling goes on working.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from protocol.errors import ErrorCode, ProtocolError
from protocol.schema import shorten

from .sources import PICKLE_SUFFIXES, SINGLE_FILE_SUFFIX, ModelRoots

UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "upscale_models")
FIELD = "job.upscale.upscaler"


def in_upscaler_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in an upscaler folder below ``root``."""
    parts = path.relative_to(root).parts[:-1]
    return any(part in UPSCALER_FOLDERS for part in parts)


def upscaler_name(path: Path, root: Path) -> str:
    """How clients name the upscaler at ``path``: its path below the upscaler folder,
    without the suffix (``4x-UltraSharp``)."""
    parts = path.relative_to(root).parts
    for index, part in enumerate(parts[:-1]):
        if part in UPSCALER_FOLDERS:
            parts = parts[index + 1:]
            break
    return "/".join(parts)[:-len(SINGLE_FILE_SUFFIX)]


def _candidates(name: str) -> list[str]:
    names = [name] if name.lower().endswith(SINGLE_FILE_SUFFIX) else [name + SINGLE_FILE_SUFFIX]
    return names + [f"{folder}/{n}" for folder in UPSCALER_FOLDERS for n in names]


def resolve_upscaler(name: str, roots: ModelRoots) -> Path:
    """The ``.safetensors`` file ``name`` means. ProtocolError naming the job's field:
    model_load_failed for a pickle (saying why), model_not_found for anything missing or
    outside the roots."""
    if not name.strip():
        raise ProtocolError(ErrorCode.INVALID_FIELD, "empty upscaler name", FIELD)
    suffix = Path(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"upscaler {shorten(name)!r} is a pickle file ({suffix}); Atelier never unpickles "
            f"model files because loading one can run arbitrary code. Convert it to "
            f".safetensors (chaiNNer, or safetensors' convert script) and name that.", FIELD)
    found = roots.first_single_file(_candidates(name))
    if found is not None:
        return found
    raise ProtocolError(
        ErrorCode.MODEL_NOT_FOUND,
        f"no upscaler named {shorten(name)!r} in the model folders (A1111 models/ESRGAN, "
        f"ComfyUI models/upscale_models, an upscale_models folder in any --models-dir or in "
        f"Atelier's home; .safetensors only); see `atelier models list`", FIELD)


@dataclass
class LoadedUpscaler:
    """A spandrel model descriptor as upscale.py's ``SuperResolution``: ``(1, 3, h, w)`` in
    [0, 1] -> ``(1, 3, h*scale, w*scale)``, tiles padded to the sizes the network takes."""
    descriptor: Any
    scale: int
    multiple_of: int
    minimum: int
    device: torch.device | str

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        pad_h = _padded(height, self.multiple_of, self.minimum) - height
        pad_w = _padded(width, self.multiple_of, self.minimum) - width
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        out = self.descriptor(image.to(self.device))
        return out[..., :height * self.scale, :width * self.scale]


def _padded(size: int, multiple: int, minimum: int) -> int:
    return max(minimum, -(-size // multiple) * multiple)


def load_upscaler(path: Path, device: torch.device | str) -> LoadedUpscaler:
    """Read ``path`` (a resolved ``.safetensors`` file) and build its network through
    spandrel. ProtocolError naming the job's field when spandrel is missing, the file is
    not a known super-resolution architecture, or it does not upscale."""
    try:
        import spandrel
    except Exception as exc:   # ImportError, or torchvision failing to load for this torch
        raise ProtocolError(
            ErrorCode.UNSUPPORTED,
            f"upscaler models need the spandrel package, which this daemon cannot import "
            f"({type(exc).__name__}: {shorten(str(exc), 200)}); install it with "
            f"`pip install atelier[upscalers]` (it needs torchvision built for the installed "
            f"torch), or leave job.upscale.upscaler empty for a Lanczos resize", FIELD) from exc
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(str(path))
        descriptor = spandrel.ModelLoader(device=device).load_from_state_dict(state)
    except (SafetensorError, OSError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{path.name} is not a usable safetensors file: {exc}", FIELD) from exc
    except Exception as exc:   # spandrel's UnsupportedModelError and shape mismatches
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{path.name} is not a super-resolution model spandrel knows: "
                            f"{type(exc).__name__}: {shorten(str(exc), 300)}", FIELD) from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.scale < 2 \
            or descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"{path.name} is a {descriptor.architecture.name} model for "
                            f"{descriptor.purpose}, not an RGB upscaler", FIELD)
    descriptor.eval()
    sizes = descriptor.size_requirements
    return LoadedUpscaler(descriptor, int(descriptor.scale), max(1, sizes.multiple_of),
                          sizes.minimum, device)
