"""PBR maps of a colour texture: normal, height, roughness (albedo, metallic).

Two sources:

* ``image``: derived from the colour itself, as Materialize and CrazyBump do. Height is
  the texture's luminance stretched to 0..1 (light = high); the normal map is the height
  map's slope (preprocess.py's Sobel conversion, shared with the normal control) at
  ``normal_strength`` height units per pixel, in OpenGL's
  convention (+X right, +Y up, +Z out of the surface), encoded (n + 1) / 2; roughness is
  the inverted luminance in 0.3..0.95 (dark crevices rough, light tops smoother); albedo is
  the colour. No metallic map: the colour alone cannot tell metal.
* ``marigold``: diffusers' Marigold pipelines, from their weights in the Hugging Face
  cache: normals (``MarigoldNormalsPipeline``), height as inverted relative depth
  (``MarigoldDepthPipeline``), albedo, roughness and metallic (``MarigoldIntrinsicsPipeline``,
  the appearance model). Missing weights give model_not_found naming the pull command.

Seamless: on a wrapped axis the slope filter reads the other side's pixels at the border,
so a seamless texture gives seamless maps (the pointwise maps wrap trivially); Marigold's
networks run with their convolutions wrapped on those axes (tiling.py), on the texture
resized around the wrap to their processing size and back (their own resizing would clamp
at the borders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from protocol.errors import ErrorCode, ProtocolError

from .preprocess import luminance, normal_from_height
from .tiling import TileAxes

FIELD = "job.texture.source"
MARIGOLD_NORMALS = "prs-eth/marigold-normals-v1-1"
MARIGOLD_DEPTH = "prs-eth/marigold-depth-v1-1"
MARIGOLD_APPEARANCE = "prs-eth/marigold-iid-appearance-v1-1"
# The Marigold model each map comes from.
MARIGOLD_FOR_MAP = {"normal": MARIGOLD_NORMALS, "height": MARIGOLD_DEPTH,
                    "albedo": MARIGOLD_APPEARANCE, "roughness": MARIGOLD_APPEARANCE,
                    "metallic": MARIGOLD_APPEARANCE}
ROUGHNESS_RANGE = (0.3, 0.95)


def height_from_colour(rgb: np.ndarray) -> np.ndarray:
    """Luminance stretched to 0..1 (a flat colour gives a flat 0.5)."""
    luma = luminance(rgb)
    low, high = float(luma.min()), float(luma.max())
    if high - low < 1e-6:
        return np.full_like(luma, 0.5)
    return (luma - low) / (high - low)


def roughness_from_colour(rgb: np.ndarray) -> np.ndarray:
    low, high = ROUGHNESS_RANGE
    return high - (high - low) * height_from_colour(rgb)


def normal_map(height: np.ndarray, strength: float, axes: TileAxes) -> np.ndarray:
    """uint8 RGB normals of the surface z = ``strength`` x height (height units per pixel;
    the control preprocessors' height-to-normal conversion, which wraps on tiled axes)."""
    encoded = normal_from_height(height, axes, relief=strength)
    return np.clip(np.rint(encoded * 255.0), 0, 255).astype(np.uint8)


def encode_normal(normal: np.ndarray) -> np.ndarray:
    """Unit normals -> uint8 RGB, (n + 1) / 2 (flat = 128, 128, 255)."""
    return np.clip(np.rint((normal + 1.0) * 127.5), 0, 255).astype(np.uint8)


def gray_rgb(values: np.ndarray) -> np.ndarray:
    """``(H, W)`` in 0..1 -> uint8 ``(H, W, 3)`` grey."""
    gray = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def maps_from_colour(rgb: np.ndarray, maps: list[str], strength: float,
                     axes: TileAxes) -> dict[str, np.ndarray]:
    """The ``image`` source: each of ``maps`` as uint8 RGB."""
    out: dict[str, np.ndarray] = {}
    height = height_from_colour(rgb)
    for name in maps:
        if name == "albedo":
            out[name] = np.ascontiguousarray(rgb[..., :3])
        elif name == "height":
            out[name] = gray_rgb(height)
        elif name == "normal":
            out[name] = normal_map(height, strength, axes)
        elif name == "roughness":
            out[name] = gray_rgb(roughness_from_colour(rgb))
        else:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"a {name} map needs Marigold's appearance model "
                                f"({MARIGOLD_APPEARANCE}); the colour alone cannot tell it",
                                "job.texture.maps")
    return out


def pull_hint(repo_id: str) -> str:
    return f"`atelier models pull {repo_id}` (once, online)"


def find_marigold(repo_id: str, hf_cache: Optional[Path]) -> Optional[Path]:
    """The cached snapshot of ``repo_id`` with safetensors weights, or None."""
    if hf_cache is None:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=str(hf_cache), local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    return folder if any(folder.rglob("*.safetensors")) else None


def require_marigold(repo_id: str, hf_cache: Optional[Path], map_name: str) -> Path:
    folder = find_marigold(repo_id, hf_cache)
    if folder is None:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                            f"the {map_name} map from Marigold needs {repo_id} (with .safetensors "
                            f"weights) in the Hugging Face cache; get it with "
                            f"{pull_hint(repo_id)}, or use texture.source 'image'", FIELD)
    return folder


def marigold_maps(pipes: dict[str, Any], rgb: np.ndarray, maps: list[str],
                  seed: int, axes: TileAxes) -> dict[str, np.ndarray]:
    """Each of ``maps`` from the loaded Marigold pipelines ``pipes`` (repo id -> pipeline),
    at the texture's size, as uint8 RGB.

    Marigold works at its processing resolution (768 px for the released models). Its own
    resizing clamps at the borders, so on tiled axes the texture is resized here instead,
    around the wrap both ways (upscale.lanczos), and the pipeline runs at that size; the
    caller wraps its convolutions."""
    results: dict[str, np.ndarray] = {}

    def run(repo_id: str) -> np.ndarray:
        if repo_id not in results:
            results[repo_id] = _predict(pipes[repo_id], rgb, seed, axes)
        return results[repo_id]

    out: dict[str, np.ndarray] = {}
    for name in maps:
        repo_id = MARIGOLD_FOR_MAP[name]
        prediction = run(repo_id)
        if name == "normal":
            normal = prediction[0]
            normal = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)
            out[name] = encode_normal(normal)
        elif name == "height":
            depth = prediction[0, ..., 0]            # 0 = near
            out[name] = gray_rgb(1.0 - depth)
        else:
            out[name] = _appearance(pipes[repo_id], prediction, name)
    return out


def _predict(pipe: Any, rgb: np.ndarray, seed: int, axes: TileAxes) -> np.ndarray:
    """The pipeline's float prediction ``(N, H, W, C)`` at the texture's size."""
    import PIL.Image
    import torch

    from .upscale import lanczos

    height, width = rgb.shape[:2]
    generator = torch.Generator("cpu").manual_seed(seed)
    if not axes.any:
        result = pipe(PIL.Image.fromarray(np.ascontiguousarray(rgb[..., :3])), output_type="np",
                      generator=generator, match_input_resolution=True)
        return np.asarray(result.prediction, np.float32)
    side = pipe.default_processing_resolution or max(width, height)
    scale = min(1.0, side / max(width, height))
    small_w, small_h = (max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8))
    small = lanczos(np.ascontiguousarray(rgb[..., :3]), small_w, small_h, axes)
    result = pipe(PIL.Image.fromarray(small), output_type="np", generator=generator,
                  processing_resolution=0, match_input_resolution=True)
    prediction = np.asarray(result.prediction, np.float32)
    return np.stack([lanczos(np.ascontiguousarray(p), width, height, axes) for p in prediction])


# The appearance model's sub-target each of our map names reads.
_SUB_TARGETS = {"roughness": "roughness", "metallic": "metallicity"}


def _appearance(pipe: Any, prediction: np.ndarray, name: str) -> np.ndarray:
    """albedo / roughness / metallic from the appearance model's targets, as its
    ``target_properties`` lay them out: "albedo" (RGB, sRGB or linear) and "material"
    whose channels are the sub-targets (roughness, metallicity, unused)."""
    properties = pipe.target_properties
    targets = list(properties["target_names"])
    if name == "albedo":
        albedo = np.clip(prediction[targets.index("albedo")], 0.0, 1.0)
        if properties.get("albedo", {}).get("prediction_space") == "linear":
            albedo = np.where(albedo <= 0.0031308, 12.92 * albedo,
                              1.055 * albedo ** (1 / 2.4) - 0.055)
        return np.clip(np.rint(albedo * 255), 0, 255).astype(np.uint8)
    wanted = _SUB_TARGETS[name]
    for index, target in enumerate(targets):
        subs = properties.get(target, {}).get("sub_target_names") or []
        if wanted in subs:
            return gray_rgb(np.clip(prediction[index][..., subs.index(wanted)], 0.0, 1.0))
    raise ProtocolError(ErrorCode.UNSUPPORTED,
                        f"this Marigold appearance model predicts no {wanted}", "job.texture.maps")
