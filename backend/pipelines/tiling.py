"""Seamless tiling: convolutions that wrap around on chosen axes, for one job only.

A texture tiles when the network treats the image as a torus on the tiled axes.
Attention, group norm and nearest upsampling already commute with a circular roll (and
strided convolutions with rolls by their stride), so the only thing that has to change
is the padding of every ``Conv2d``: circular on
the tiled axes, zeros on the others. The convs are shared by every pipeline kind (the same
objects after ``from_pipe``), so ``wrapped_convolutions`` changes them only for the length
of a ``with`` block. Tiled on both axes, each conv's own ``padding_mode`` becomes
"circular". On one axis (which ``padding_mode`` cannot mix with zeros), a forward pre-hook
pads that axis circularly and the conv keeps zero-padding the other itself. On exit (also
on an exception or a cancel) the hooks go and the exact padding settings come back.

The worker runs one job at a time, so no other job can call the modules while a block
is active. Compiled modules (``nn.Module.compile``) follow too: dynamo guards on the hooks
and the padding, so it recompiles once per mode and keeps both graphs.

The VAE encoder's downsamplers (diffusers' ``Downsample2D`` with ``padding=0``) pad one
zero column and row on the right/bottom by hand before a conv without padding. A pre-hook
on that conv puts the first column/row there instead on the wrapped axes, which is
circular padding, so encoding an init image wraps exactly too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from torch import nn

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import TILINGS

T = TypeVar("T")


@dataclass(frozen=True)
class TileAxes:
    """Which image axes wrap around: x = left/right edges, y = top/bottom edges."""
    x: bool
    y: bool

    @property
    def any(self) -> bool:
        return self.x or self.y

    @property
    def name(self) -> str:
        return {(False, False): "none", (True, False): "x", (False, True): "y",
                (True, True): "both"}[(self.x, self.y)]


def tile_axes(tiling: str) -> TileAxes:
    """Parse the request's ``tiling`` field."""
    if tiling not in TILINGS:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"tiling {tiling!r} is not one of {', '.join(TILINGS)}", "job.tiling")
    return TileAxes(x=tiling in ("x", "both"), y=tiling in ("y", "both"))


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) that the conv would add itself."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        # "same": torch puts the odd extra pixel on the right/bottom.
        total_y, total_x = (d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
        return (total_x // 2, total_x - total_x // 2, total_y // 2, total_y - total_y // 2)
    pad_y, pad_x = conv.padding
    return (pad_x, pad_x, pad_y, pad_y)


class _AxisPadding:
    """Forward pre-hook: pad the conv input circularly on the wrapped axes, in one copy.
    The conv keeps padding the other axis with zeros itself (``native_padding``)."""

    def __init__(self, padding: tuple[int, int, int, int], axes: TileAxes):
        left, right, top, bottom = padding
        self.circular = (left if axes.x else 0, right if axes.x else 0,
                         top if axes.y else 0, bottom if axes.y else 0)
        self.zeros = (0 if axes.x else left, 0 if axes.x else right,
                      0 if axes.y else top, 0 if axes.y else bottom)

    @property
    def native_padding(self) -> Optional[tuple[int, int]]:
        """The (y, x) padding the conv can still add itself, or None when the zeros are
        uneven (``padding="same"`` with an even kernel) and must be padded here too."""
        left, right, top, bottom = self.zeros
        return (top, left) if (left, top) == (right, bottom) else None

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        x = F.pad(x, self.circular, mode="circular")
        if self.native_padding is None:
            x = F.pad(x, self.zeros)
        return (x, *rest)


class _WrapHandPadding:
    """Forward pre-hook for the conv of a ``Downsample2D`` that zero-pads (0, 1, 0, 1) by
    hand: the padded last column/row becomes a copy of the first on the wrapped axes,
    which is what circular padding of (0, 1) gives."""

    def __init__(self, axes: TileAxes):
        self.axes = axes

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        if self.axes.x:
            x = torch.cat([x[..., :-1], x[..., :1]], dim=-1)
        if self.axes.y:
            x = torch.cat([x[..., :-1, :], x[..., :1, :]], dim=-2)
        return (x, *rest)


def _submodules(modules: Iterable[Optional[nn.Module]]) -> Iterator[nn.Module]:
    """Every module under ``modules`` once (shared ones too), skipping None entries."""
    seen: set[int] = set()
    for root in modules:
        if root is None:
            continue
        for module in root.modules():
            if id(module) not in seen:
                seen.add(id(module))
                yield module


def _hand_padded_convs(modules: Iterable[Optional[nn.Module]]) -> list[nn.Conv2d]:
    """The convs of downsamplers that pad their input themselves before an unpadded conv."""
    return [module.conv for module in _submodules(modules)
            if isinstance(module, Downsample2D) and module.use_conv and module.padding == 0
            and isinstance(module.conv, nn.Conv2d)]


def _padded_convs(modules: Iterable[Optional[nn.Module]]) -> list[nn.Conv2d]:
    # Convs with another padding_mode pad on their own; they are left as they are.
    return [module for module in _submodules(modules)
            if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
            and any(_explicit_padding(module))]


@contextlib.contextmanager
def wrapped_convolutions(modules: Iterable[Optional[nn.Module]],
                         axes: TileAxes) -> Iterator[int]:
    """Make every padded Conv2d under ``modules`` wrap on ``axes`` inside the block.

    Yields how many convolutions were changed (0 when ``axes`` is none), counting the
    hand-padded downsamplers' convs. ``None`` entries are skipped so callers can pass
    optional components as they are.
    """
    if not axes.any:
        yield 0
        return
    modules = list(modules)
    with contextlib.ExitStack() as restore:
        hand_padded = _hand_padded_convs(modules)
        for conv in hand_padded:
            restore.callback(conv.register_forward_pre_hook(_WrapHandPadding(axes)).remove)
        convs = _padded_convs(modules)
        for conv in convs:
            if axes.x and axes.y:
                # Wrapped on both axes: the conv's own circular mode pads in one copy, no hook.
                restore.callback(setattr, conv, "padding_mode", conv.padding_mode)
                conv.padding_mode = "circular"
                continue
            original = conv.padding
            padding = _AxisPadding(_explicit_padding(conv), axes)
            hook = conv.register_forward_pre_hook(padding)
            restore.callback(hook.remove)
            restore.callback(setattr, conv, "padding", original)
            conv.padding = padding.native_padding or (0, 0)
        yield len(convs) + len(hand_padded)


def whole_image_vae(vae: nn.Module, width: int, height: int) -> Optional[nn.Module]:
    """``vae`` when it encodes a ``width`` x ``height`` image in one piece, so its
    convolutions may wrap; None when diffusers will encode it tile by tile
    (``enable_tiling`` and a side over one tile), where wrapping would fold every tile
    onto itself. Decoding keeps the wrap in both cases through ``decode_wrapped``."""
    tiled = bool(getattr(vae, "use_tiling", False)) and max(width, height) > vae.tile_sample_min_size
    return None if tiled else vae


def decodes_in_tiles(vae: nn.Module, latents: torch.Tensor) -> bool:
    """Whether diffusers' ``AutoencoderKL.decode`` will decode ``latents`` tile by tile
    (the same test it makes: tiling enabled and a side over one tile)."""
    return bool(getattr(vae, "use_tiling", False)) and \
        max(latents.shape[-2:]) > vae.tile_latent_min_size


def decode_wrapped(vae: nn.Module, latents: torch.Tensor, axes: TileAxes,
                   decode: Callable[[torch.Tensor], T]) -> T:
    """``decode(latents)`` (``(B, C, h, w)`` -> ``(B, H, W, ...)`` images) wrapping on ``axes``.

    A whole-image decode runs with the VAE's convolutions wrapped. A tiled decode
    (``vae.enable_tiling()``, for images too large to decode at once) cannot: tiles are
    decoded one by one, so circular convolutions would wrap every tile onto itself.
    Instead the latent is extended circularly on the wrapped axes by half a tile, decoded
    with plain convolutions, and the extension is cut off the pixels: the wrap edge then
    lies inside the decoded area and is blended like any boundary between tiles.
    """
    if not axes.any:
        return decode(latents)
    if not decodes_in_tiles(vae, latents):
        with wrapped_convolutions([vae], axes):
            return decode(latents)
    height, width = latents.shape[-2:]
    # Half a tile of context keeps the wrap edge clear of a tile's zero-padded border.
    margin = max(1, vae.tile_latent_min_size // 2)
    pad_x = min(margin, width) if axes.x else 0
    pad_y = min(margin, height) if axes.y else 0
    images = decode(F.pad(latents, (pad_x, pad_x, pad_y, pad_y), mode="circular"))
    scale_y = images.shape[1] // (height + 2 * pad_y)
    scale_x = images.shape[2] // (width + 2 * pad_x)
    top, left = pad_y * scale_y, pad_x * scale_x
    return images[:, top:top + height * scale_y, left:left + width * scale_x]
