"""The jobs a freshly loaded, compiled model runs before it serves anyone.

Compiled modules compile on their first call. So that this happens at load rather than in
the first user's job, the generator runs two-step jobs of the kind the model serves (its
family's base kind) through the same path as real jobs, untiled and tiled on both axes.
Going through the job path, they call the UNet, the VAE and the sampler exactly as jobs
do, so they compile the graphs that jobs then reuse.
"""

from __future__ import annotations

import dataclasses

from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import DepthInput, GenerateRequest

from ..models.families import BASE_KIND, DEPTH, INPAINT

WARM_UP_TILINGS = ("none", "both")
WARM_UP_STEPS = 2

WarmUpJob = tuple[GenerateRequest, dict[str, ImageFrame]]


def warm_up_jobs(family: str, side: int) -> list[WarmUpJob]:
    """(request, uploads) of each warm-up job for a ``family`` model at ``side`` x ``side``:
    txt2img; for inpainting models an inpaint of a grey image, all of it masked; for
    SD2-depth a txt2img on a depth ramp."""
    jobs = []
    for tiling in WARM_UP_TILINGS:
        request = GenerateRequest(prompt="", width=side, height=side, steps=WARM_UP_STEPS,
                                  seed=0, tiling=tiling)
        uploads: list[ImageFrame] = []
        kind = BASE_KIND.get(family)
        if kind == INPAINT:
            uploads = [_upload(PixelFormat.RGBA8, side, bytes((127, 127, 127, 255)) * side * side),
                       _upload(PixelFormat.GRAY8, side, b"\xff" * side * side)]
            request = dataclasses.replace(request, kind="inpaint", init_image=uploads[0].id,
                                          mask=uploads[1].id)
        elif kind == DEPTH:
            ramp = bytes(x * 255 // max(1, side - 1) for x in range(side)) * side
            uploads = [_upload(PixelFormat.GRAY8, side, ramp)]
            request = dataclasses.replace(request, depth=DepthInput(upload=uploads[0].id,
                                                                    convention="normalized"))
        jobs.append((request, {frame.id: frame for frame in uploads}))
    return jobs


def _upload(fmt: PixelFormat, side: int, data: bytes) -> ImageFrame:
    return ImageFrame(FrameKind.UPLOAD, fmt, 0, side, side, new_id(), data)
