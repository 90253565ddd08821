"""Every message of protocol v1, defined once.

Text frames carry one JSON object each with a ``"type"`` field naming the
record below. Images never travel inside JSON: a record refers to them by
upload id (client -> daemon) or by index (daemon -> client), and the pixels
follow as binary frames (see ``frames.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from .schema import spec

PROTOCOL_VERSION = 1

# "preprocess": no diffusion; the result is the control image ``controls[0]`` makes
JobKind = Literal["txt2img", "img2img", "inpaint", "make_seamless", "preprocess",
                  "upscale", "texture_set"]
Tiling = Literal["none", "x", "y", "both"]
SchedulerName = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "lcm"]
OutputFormat = Literal["raw", "png"]
DepthConvention = Literal["z", "distance", "normalized"]
# What a control image shows (``ControlLayer.kind``); each needs a control model trained on it.
ControlKind = Literal["depth", "normal", "lineart", "scribble", "softedge", "canny", "pose"]
# Few-step sampling recipes (GenerateRequest.sampler_preset); the daemon lists the ones it
# knows in ``welcome.sampler_presets``.
SamplerPreset = Literal["lightning_4", "lightning_8", "lcm_4", "lcm_8", "turbo_1", "hyper_8",
                        "schnell_4", "turbo_4"]
# What a ``ModelInfo`` is, so clients can fill separate menus.
ModelKind = Literal["checkpoint", "controlnet", "t2i_adapter", "lora", "embedding", "upscaler",
                   "ip_adapter"]
# How a reference image steers (ReferenceImage.flavour): "content" = its subject and look
# (all of the IP-Adapter's attention layers), "style" = its style only (InstantStyle: only
# the layers that carry style, so the prompt keeps the subject and layout)
ReferenceFlavour = Literal["content", "style"]
# The maps a "texture_set" job can return (TextureSettings.maps, ImageInfo.label).
TextureMap = Literal["albedo", "normal", "height", "roughness", "metallic"]
# Where a texture set's maps come from: "marigold" = diffusers' Marigold pipelines (weights
# in the Hugging Face cache), "image" = derived from the colour image itself (height from
# luminance, normal from height), "auto" = Marigold where its weights are present.
TextureSource = Literal["auto", "marigold", "image"]

SCHEDULERS: tuple[str, ...] = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "lcm")
TILINGS: tuple[str, ...] = ("none", "x", "y", "both")
CACHE_INTERVAL_MAX = 10     # GenerateRequest.cache_interval: the whole UNet at least every 10th step
MODEL_NAME_MAX = 1024       # characters of a model name (job.model, control.model, load_model)
CLIENT_KEY_LENGTH = 32      # hex digits of the secret that proves who owns a job
JOB_ID_LENGTH = 32          # hex digits of a job id (and an upload id)
LIVE_NAME_MAX = 64          # characters of a live session's name (Submit.live)
SAMPLER_PRESETS: tuple[str, ...] = ("lightning_4", "lightning_8", "lcm_4", "lcm_8", "turbo_1",
                                    "hyper_8", "schnell_4", "turbo_4")
LORAS_MAX = 8               # LoRAs of one job (GenerateRequest.loras plus inline <lora:...> tags)
LORA_WEIGHT_MAX = 4.0       # |LoraWeight.weight|
UPSCALE_FACTOR_MAX = 16.0   # UpscaleSettings.scale
TEXTURE_MAPS: tuple[str, ...] = ("albedo", "normal", "height", "roughness", "metallic")
CONTROL_KINDS: tuple[str, ...] = ("depth", "normal", "lineart", "scribble", "softedge", "canny",
                                  "pose")
# Control layers of one job (GenerateRequest.controls, plus the old depth + control pair):
# each ControlNet runs beside the UNet at every step, so four already costs ~3x a plain step.
CONTROLS_MAX = 4
REFERENCES_MAX = 4          # reference images of one job (GenerateRequest.references)
REFERENCE_WEIGHT_MAX = 2.0  # ReferenceImage.weight
# Regions of one job (GenerateRequest.regions): each adds one conditional UNet pass per step
REGIONS_MAX = 8


# ---------------------------------------------------------------- requests

@dataclass(frozen=True)
class DepthInput:
    """A depth map for depth-conditioned generation.

    ``upload`` names a FLOAT32 (or GRAY8) image uploaded before the job.
    ``convention``: "z" = depth along the camera's viewing axis (a renderer's Z pass, e.g.
    Blender's), "distance" = distance from the camera's centre (both: near is small);
    "normalized" = already 0..1 with near = 1, far = 0.
    Pixels whose value is >= ``background_at`` (z, distance) or <= ``background_at``
    (normalized) have no geometry and are treated as farthest.
    ``estimate``: ignore ``upload`` and estimate depth from the init image on the daemon.
    """
    upload: Optional[str] = None
    convention: DepthConvention = "distance"
    background_at: Optional[float] = None
    estimate: bool = False


@dataclass(frozen=True)
class ControlSettings:
    """Which depth model conditions the job and how strongly."""
    # ControlNet or T2I-Adapter id/path; None = the daemon's choice
    model: Optional[str] = spec(None, max_len=MODEL_NAME_MAX)
    scale: float = spec(1.0, min=0.0, max=2.0)
    start: float = spec(0.0, min=0.0, max=1.0)
    end: float = spec(1.0, min=0.0, max=1.0)


@dataclass(frozen=True)
class ControlLayer:
    """One control of a job: an image that steers the composition, and the ControlNet or
    T2I-Adapter that reads it.

    ``image``: upload id. With ``preprocess`` false it already is the control image, in the
    form the kind's models take (PROTOCOL.md 4.4): line kinds light lines on a dark ground
    (``invert`` for dark lines on a light ground, as painted), depth near = light (a
    float32 upload is read by ``convention`` / ``background_at`` as ``DepthInput``),
    normal in camera space encoded (n + 1) / 2. With ``preprocess`` true it is a plain
    picture the daemon turns into the control image first (depth: estimated; absent: the
    init image). ``model``: None = the daemon's default for the kind and model family.
    ``scale``, ``start``, ``end`` as in ``ControlSettings``."""
    kind: ControlKind
    image: Optional[str] = spec(None, max_len=JOB_ID_LENGTH)
    model: Optional[str] = spec(None, max_len=MODEL_NAME_MAX)
    scale: float = spec(1.0, min=0.0, max=2.0)
    start: float = spec(0.0, min=0.0, max=1.0)
    end: float = spec(1.0, min=0.0, max=1.0)
    preprocess: bool = False
    invert: bool = False
    convention: DepthConvention = "distance"
    background_at: Optional[float] = None


@dataclass(frozen=True)
class ReferenceImage:
    """A picture whose subject or style the job borrows (IP-Adapter).

    ``image``: upload id (RGBA8, RGB8 or PNG, any size; the image encoder takes a centred
    square of it). ``weight``: 0 = as if absent. ``flavour``: ReferenceFlavour.
    ``model``: an IP-Adapter as ``list_models`` reports it (kind "ip_adapter") made for the
    job model's family; None = the daemon's default for the family (PROTOCOL.md 4.6)."""
    image: str = spec(max_len=JOB_ID_LENGTH)
    weight: float = spec(0.6, min=0.0, max=REFERENCE_WEIGHT_MAX)
    flavour: ReferenceFlavour = "content"
    model: Optional[str] = spec(None, max_len=MODEL_NAME_MAX)


@dataclass(frozen=True)
class Region:
    """A part of the canvas with its own prompt (PROTOCOL.md 4.7).

    ``mask``: upload id of a GRAY8 (or PNG) image, any size (resized to the job's), 255 =
    this region's prompt governs, 0 = it does not, values between blend softly. Where
    regions overlap their weights share the pixel; where their masks sum to less than 255
    the job's own ``prompt`` makes up the rest. ``negative_prompt`` None = the job's."""
    mask: str = spec(max_len=JOB_ID_LENGTH)
    prompt: str = spec("", max_len=4000)
    negative_prompt: Optional[str] = spec(None, max_len=4000)


@dataclass(frozen=True)
class LoraWeight:
    """A LoRA applied to one job: ``name`` as ``list_models`` reports it (kind "lora"; a
    ``.safetensors`` file in the model folders, named without its suffix), at ``weight``."""
    name: str = spec(max_len=MODEL_NAME_MAX)
    weight: float = spec(1.0, min=-LORA_WEIGHT_MAX, max=LORA_WEIGHT_MAX)


@dataclass(frozen=True)
class UpscaleSettings:
    """Kind "upscale": ``init_image`` to ``width`` x ``height``, or to its own size times
    ``scale`` (rounded to multiples of 8) when ``scale`` is given.

    ``upscaler``: a super-resolution model as ``list_models`` reports it (kind "upscaler",
    a ``.safetensors`` file in an ESRGAN / upscale_models folder); None = Lanczos resize.
    ``refine_strength`` > 0 runs a tiled img2img over the upscaled image (the job's prompt,
    LoRAs, scheduler, steps and seed) at that strength; 0 = upscale only.
    ``tile``: the refine's tile side in pixels, 0 = the model's native side; ``overlap``:
    pixels neighbouring tiles share, 0 = a quarter of the tile."""
    scale: Optional[float] = spec(None, min=1.0, max=UPSCALE_FACTOR_MAX)
    upscaler: Optional[str] = spec(None, max_len=MODEL_NAME_MAX)
    refine_strength: float = spec(0.0, min=0.0, max=1.0)
    tile: int = spec(0, min=0, max=4096)
    overlap: int = spec(0, min=0, max=2048)


@dataclass(frozen=True)
class TextureSettings:
    """Kind "texture_set": PBR maps of the colour texture ``init_image``, at its size, one
    result image per entry of ``maps`` in that order, each labelled with its name.

    normal: OpenGL convention (+Y up), encoded (n + 1) / 2; height: light = high;
    roughness and metallic: 0..255 = 0..1; albedo: the base colour (``source`` "image":
    the texture itself). ``normal_strength`` scales the slopes of a normal map made from
    the height map. With ``tiling`` x/y/both the maps wrap around those axes as well."""
    maps: list[TextureMap] = spec(default_factory=lambda: ["normal", "height", "roughness"],
                                  max_len=len(TEXTURE_MAPS))
    source: TextureSource = "auto"
    normal_strength: float = spec(8.0, min=0.0, max=100.0)


@dataclass(frozen=True)
class GenerateRequest:
    """One generation job. Same request + same seed -> same pixels."""
    kind: JobKind = "txt2img"
    prompt: str = spec("", max_len=4000)
    negative_prompt: str = spec("", max_len=4000)
    model: Optional[str] = spec(None, max_len=MODEL_NAME_MAX)   # None = the daemon's default model
    width: int = spec(512, min=8)
    height: int = spec(512, min=8)
    # None = the model's recommended (protocol/families.py sampling_defaults: 20 steps and
    # guidance 7.0 for SD, 28 and 3.5 for FLUX.1-dev ...); result.params says what ran
    steps: Optional[int] = spec(None, min=1)
    guidance: Optional[float] = spec(None, min=0.0, max=50.0)
    seed: Optional[int] = spec(None, min=0, max=2**32 - 1)   # None = random; the result says which
    scheduler: SchedulerName = "euler_a"
    batch_size: int = spec(1, min=1)
    strength: float = spec(0.75, min=0.0, max=1.0)   # img2img / inpaint / make_seamless
    init_image: Optional[str] = None     # upload id of an RGBA8/PNG image
    mask: Optional[str] = None           # upload id of a GRAY8 mask, 255 = repaint
    mask_grow: int = spec(0, min=0, max=256)      # pixels
    mask_feather: int = spec(0, min=0, max=256)   # pixels
    context_padding: int = spec(32, min=0, max=4096)  # pixels of context around the mask
    tiling: Tiling = "none"
    seam_width: int = spec(64, min=8, max=1024)   # make_seamless: band width in pixels
    # The single depth control of protocol v1's first form; the daemon runs it as the first
    # of ``controls`` (one code path), so both may be given together.
    depth: Optional[DepthInput] = None
    control: Optional[ControlSettings] = None
    # Several controls composed (multi-ControlNet / T2I-Adapters), each with its own model,
    # scale and window; kind "preprocess" runs the preprocessor of the one control alone
    controls: list[ControlLayer] = spec(default_factory=list, max_len=CONTROLS_MAX)
    preview_every: int = spec(0, min=0, max=1000)  # 0 = no previews
    output_format: OutputFormat = "raw"
    # 1 = the whole UNet every step; N = every N-th step, the others reuse its deep
    # features (faster, slightly different images: an opt-in quality trade)
    cache_interval: int = spec(1, min=1, max=CACHE_INTERVAL_MAX)
    # LoRAs for this job only; A1111's inline ``<lora:name:weight>`` tags in the prompt
    # join them (and are taken out of the prompt's text)
    loras: list[LoraWeight] = spec(default_factory=list, max_len=LORAS_MAX)
    # A few-step recipe that sets scheduler, steps, guidance and timestep spacing
    sampler_preset: Optional[SamplerPreset] = None
    # Pictures whose subject or style to borrow (IP-Adapter)
    references: list[ReferenceImage] = spec(default_factory=list, max_len=REFERENCES_MAX)
    # Parts of the canvas with their own prompts; ``prompt`` governs the rest
    regions: list[Region] = spec(default_factory=list, max_len=REGIONS_MAX)
    upscale: Optional[UpscaleSettings] = None     # kind "upscale"
    texture: Optional[TextureSettings] = None     # kind "texture_set"


# ------------------------------------------------------- client -> daemon

@dataclass(frozen=True)
class Hello:
    """``client_key``: the key a previous ``welcome`` gave this client, to own its jobs again
    after a reconnect (or a daemon restart); absent = a new identity."""
    type: ClassVar[str] = "hello"
    protocol: int
    client: str = spec("", max_len=200)
    client_key: Optional[str] = spec(None, max_len=CLIENT_KEY_LENGTH)


@dataclass(frozen=True)
class Submit:
    """Queue a job. ``ref`` is the client's own tag, echoed in ``accepted`` and errors.

    ``live`` names a live session of this client (live painting): the job supersedes the
    client's queued and running jobs of the same session, which end ``cancelled`` with
    reason ``superseded`` (a running one within a step), so only the newest state runs."""
    type: ClassVar[str] = "submit"
    job: GenerateRequest
    ref: str = spec("", max_len=100)
    live: Optional[str] = spec(None, max_len=LIVE_NAME_MAX)


@dataclass(frozen=True)
class Cancel:
    type: ClassVar[str] = "cancel"
    job_id: str = spec(max_len=JOB_ID_LENGTH)


@dataclass(frozen=True)
class Fetch:
    """Ask again for a job's outcome (after a reconnect); subscribes to a running job."""
    type: ClassVar[str] = "fetch"
    job_id: str = spec(max_len=JOB_ID_LENGTH)


@dataclass(frozen=True)
class ListModels:
    type: ClassVar[str] = "list_models"


@dataclass(frozen=True)
class LoadModel:
    type: ClassVar[str] = "load_model"
    model: str = spec(max_len=MODEL_NAME_MAX)


@dataclass(frozen=True)
class GetStatus:
    type: ClassVar[str] = "get_status"


# ------------------------------------------------------- daemon -> client

@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_pixels: int          # width * height of one image
    max_side: int
    max_batch: int
    max_steps: int
    max_queue: int
    max_uploads: int         # uploads waiting for a submit, per connection
    max_upload_bytes: int = 0        # bytes of one client's uploads: waiting ones + queued jobs'
    max_total_upload_bytes: int = 0  # the same, all clients together
    max_connections: int = 0         # open websocket connections; more get HTTP 503
    max_outbox_bytes: int = 0        # unsent bytes to one connection before it is closed
    max_upscale_side: int = 0        # kind "upscale": output width / height
    max_upscale_pixels: int = 0      # kind "upscale": output width * height


@dataclass(frozen=True)
class Welcome:
    type: ClassVar[str] = "welcome"
    protocol: int
    server: str
    capabilities: list[str]
    device: str
    model: Optional[str]
    limits: Limits
    client_key: Optional[str] = None   # send it in ``hello`` when reconnecting
    sampler_presets: list[str] = field(default_factory=list)   # GenerateRequest.sampler_preset


@dataclass(frozen=True)
class Accepted:
    type: ClassVar[str] = "accepted"
    job_id: str
    ref: str
    position: int            # 0 = running next


@dataclass(frozen=True)
class Started:
    type: ClassVar[str] = "started"
    job_id: str


@dataclass(frozen=True)
class Progress:
    """``preview`` true: a PREVIEW binary frame for this job and step follows."""
    type: ClassVar[str] = "progress"
    job_id: str
    step: int
    total: int
    preview: bool = False


@dataclass(frozen=True)
class ImageInfo:
    """``label``: what the image is where a job returns several kinds (a texture set's map
    names, TextureMap); None for plain generations."""
    index: int
    width: int
    height: int
    format: str
    seed: int
    label: Optional[str] = None


@dataclass(frozen=True)
class Result:
    """Sent after the job's RESULT binary frames, so all pixels are in when it arrives.

    ``params`` is the request as actually run (seed resolved, sizes settled);
    ``tiling`` is the tiling actually applied.
    """
    type: ClassVar[str] = "result"
    job_id: str
    images: list[ImageInfo]
    params: GenerateRequest
    tiling: Tiling
    model: str
    seconds: float


@dataclass(frozen=True)
class Cancelled:
    """``reason``: absent when the client cancelled; ``superseded`` when a newer job of the
    same live session replaced it."""
    type: ClassVar[str] = "cancelled"
    job_id: str
    reason: Optional[Literal["superseded"]] = None


@dataclass(frozen=True)
class Error:
    type: ClassVar[str] = "error"
    code: str
    message: str
    field: Optional[str] = None
    job_id: Optional[str] = None
    ref: Optional[str] = None


@dataclass(frozen=True)
class ModelInfo:
    name: str                # what to pass as ``model``
    source: str              # "tiny", "diffusers", "single_file", "hf_cache"
    family: str              # "sd15", "sdxl", "sd2_depth", "controlnet", "t2i_adapter", "unknown"
    path: Optional[str] = None
    # what it is; for a LoRA or an embedding ``family`` is the base family it was made for
    kind: ModelKind = "checkpoint"
    # a ControlNet's or T2I-Adapter's control kind (``ControlLayer.kind``) where its name
    # says it; None where it does not (such a model is trusted with any kind)
    control_kind: Optional[ControlKind] = None


@dataclass(frozen=True)
class ModelProblem:
    """Something in a model folder that looks like a model but cannot be read as one."""
    path: str
    message: str


@dataclass(frozen=True)
class Models:
    type: ClassVar[str] = "models"
    models: list[ModelInfo]
    current: Optional[str] = None
    problems: list[ModelProblem] = field(default_factory=list)


@dataclass(frozen=True)
class ModelLoaded:
    type: ClassVar[str] = "model_loaded"
    model: str
    family: str
    seconds: float


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: Literal["queued", "running"]


@dataclass(frozen=True)
class Status:
    """Other clients' jobs show only as counts: ``queue_length`` and ``busy``."""
    type: ClassVar[str] = "status"
    queue_length: int              # queued jobs of all clients
    running: Optional[str]         # the running job's id when it is this client's
    device: str
    model: Optional[str]
    memory_allocated: int = 0   # bytes on the device, 0 where unknown
    memory_total: int = 0
    busy: bool = False             # a job (anyone's) is running
    jobs: list[JobStatus] = field(default_factory=list)   # this client's jobs not yet ended


CLIENT_MESSAGES = (Hello, Submit, Cancel, Fetch, ListModels, LoadModel, GetStatus)
SERVER_MESSAGES = (Welcome, Accepted, Started, Progress, Result, Cancelled, Error, Models,
                   ModelLoaded, Status)
MESSAGE_TYPES: dict[str, type] = {cls.type: cls for cls in CLIENT_MESSAGES + SERVER_MESSAGES}
