"""Panel settings as plain data, and the requests built from them. No Blender needed.

The add-on's PropertyGroup is copied into :class:`PanelSettings` at the start
of an operator; everything after that works on plain values, so request
building, parameter records and history recall are testable without Blender.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from .protocol import ErrorCode, GenerateRequest, ProtocolError, validate
from .protocol.families import fits, serves_control
from .protocol.messages import (CACHE_INTERVAL_MAX, LORAS_MAX, ControlLayer, Limits,
                                LoraWeight, ModelInfo, ReferenceImage, Result)

# Cycles and EEVEE write this into the Z pass where no geometry was hit (1e10);
# anything at or past it is background for the daemon.
BACKGROUND_DEPTH = 1e9
RECORD_KEY = "atelier"  # custom property group on images made by the add-on
NAME_LIMIT = 63         # Blender ID names are at most 63 bytes
MAX_BATCH = 8           # images per job from the panel
SIZE_MULTIPLE = 8       # image sides the daemon takes (PROTOCOL.md: width, height)
# Blender's integer properties are signed 32-bit. Seeds stay low enough that every image
# of a batch (seed + index, as the daemon numbers them) still fits one.
SEED_MAX = 2 ** 31 - 1 - MAX_BATCH
# What the history list keeps of each result: enough to regenerate it.
HISTORY_FIELDS = ("prompt", "negative_prompt", "model", "kind", "width", "height", "steps",
                  "guidance", "seed", "scheduler", "strength", "tiling", "cache_interval",
                  "loras", "sampler_preset", "pass_controls")
# Recorded only for depth-conditioned results ("" = the daemon's default depth model), so
# recalling an image made without depth leaves the panel's depth choice as it is.
DEPTH_FIELDS = ("control_model",)
# Where result images are kept, so they come back with the .blend (add-on preferences).
IMAGE_STORAGE_ITEMS = (
    ("PACK", "Packed into the .blend",
     "Each result is packed into the .blend file when the .blend is saved"),
    ("FILES", "PNG files beside the .blend",
     "Each result is saved as a PNG file in an 'atelier' folder beside the .blend as soon as "
     "it arrives (packed into the .blend at its first save while it has never been saved)"),
)
# Step caching (GenerateRequest.cache_interval): 1 = the whole UNet at every step.
CACHE_INTERVAL_HELP = ("Speed against quality. 1 runs the whole model at every step (full "
                       "quality); N runs it only every N-th step and reuses its deep features "
                       "in between: faster (about 1.5x at 2, 1.9x at 3), and the images "
                       "differ a little from uncached ones")
# The daemon's depth conditioners (ModelInfo.family) and how the Depth Model menu names them.
CONDITIONER_KINDS = {
    "t2i_adapter": ("T2I-Adapter: fast", "T2I-Adapter: runs once per job, next to no extra time"),
    "controlnet": ("ControlNet", "ControlNet: runs at every step, about 50-65% more time"),
}
DEPTH_MODEL_DEFAULT = "DEFAULT"   # the menu's identifier for "Daemon default" (model None)
# The render passes the panel offers as controls (PROTOCOL.md 4.4), in the panel's order,
# and the panel's settings of each: (send it, scale, start, end, model name). Depth keeps
# the names it had before controls came (use_depth, control_scale, control_model), so
# settings saved in older .blend files load as they were.
PASS_CONTROLS = ("depth", "normal", "lineart")
CONTROL_FIELDS = {
    "depth": ("use_depth", "control_scale", "depth_start", "depth_end", "control_model"),
    "normal": ("use_normal", "normal_scale", "normal_start", "normal_end", "normal_model"),
    "lineart": ("use_lineart", "lineart_scale", "lineart_start", "lineart_end",
                "lineart_model"),
}
CONTROL_TITLES = {"depth": "Depth", "normal": "Normal", "lineart": "Line Art"}
# What "Daemon default" means in each control's model menu (PROTOCOL.md 4.4).
CONTROL_DEFAULT_HELP = {
    "depth": "The daemon's own depth model (atelier serve --depth-control, else its default "
             "ControlNet)",
    "normal": "The daemon's default normal model for the job model's family (ControlNet 1.1 "
              "normalbae for SD1.5; SDXL has none: choose one)",
    "lineart": "The daemon's default line-art model for the job model's family (ControlNet "
               "1.1 lineart for SD1.5, a T2I-Adapter for SDXL)",
}
REFERENCE_FLAVOURS = (
    ("content", "Content", "Borrow the reference's subject and look"),
    ("style", "Style", "Borrow only its style; the prompt keeps subject and layout"),
)
REFERENCE_WEIGHT_DEFAULT = 0.6
DEPTH_MODEL_HELP = ("Which model conditions depth jobs (Project Texture, Render to Image with "
                    "Use Depth). A T2I-Adapter runs once per job and costs next to no time; a "
                    "ControlNet runs at every step, about 50-65% more time. Daemon default: "
                    "what the daemon was started with (atelier serve --depth-control)")


@dataclass(frozen=True)
class PanelSettings:
    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""                 # "" = the daemon's current model
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance: float = 7.0
    seed: int = 0
    random_seed: bool = True
    scheduler: str = "euler_a"
    strength: float = 0.75
    tiling: str = "none"
    batch_size: int = 1
    preview_every: int = 1
    control_scale: float = 1.0
    cache_interval: int = 1         # step caching; 1 = off (full quality)
    control_model: str = ""         # depth ControlNet / T2I-Adapter; "" = the daemon's default
    # (name, weight) of the panel's LoRA rows, in order; rows without a name send nothing
    loras: tuple[tuple[str, float], ...] = ()
    sampler_preset: str = ""        # a few-step recipe (welcome.sampler_presets); "" = none
    # Controls (CONTROL_FIELDS): whether Render to Image sends each pass (Project Texture
    # always sends depth) and how it steers; models "" = the daemon's default for the kind
    use_depth: bool = False
    depth_start: float = 0.0
    depth_end: float = 1.0
    use_normal: bool = False
    normal_scale: float = 1.0
    normal_start: float = 0.0
    normal_end: float = 1.0
    normal_model: str = ""
    use_lineart: bool = False
    lineart_scale: float = 1.0
    lineart_start: float = 0.0
    lineart_end: float = 1.0
    lineart_model: str = ""
    # A reference image (IP-Adapter) sent with every job: its weight and flavour
    use_reference: bool = False
    reference_weight: float = REFERENCE_WEIGHT_DEFAULT
    reference_flavour: str = "content"


@dataclass(frozen=True)
class ControlChoice:
    """One Controls row of the panel: whether the pass is sent, and how it steers."""
    kind: str
    enabled: bool
    scale: float
    start: float
    end: float
    model: str      # "" = the daemon's default for the kind


def control_choice(panel: PanelSettings, kind: str) -> ControlChoice:
    """The panel's row for pass control ``kind`` (one of PASS_CONTROLS)."""
    enabled, scale, start, end, model = (getattr(panel, name) for name in CONTROL_FIELDS[kind])
    return ControlChoice(kind, bool(enabled), float(scale), float(start), float(end),
                         str(model))


def passes_to_send(panel: PanelSettings, depth: bool = False) -> tuple[str, ...]:
    """The passes the panel's Controls ask for, in PASS_CONTROLS order; ``depth`` True adds
    depth whatever its row says (Project Texture generates from depth)."""
    return tuple(kind for kind in PASS_CONTROLS
                 if control_choice(panel, kind).enabled or (depth and kind == "depth"))


def request_controls(panel: PanelSettings, images: Mapping[str, str]) -> list[ControlLayer]:
    """The request's ``controls`` for rendered passes (kind -> upload id), in PASS_CONTROLS
    order, each with its row's settings. Depth is Blender's Z pass (FLOAT32, depth along the
    camera's axis: convention "z", background from BACKGROUND_DEPTH on); normal and line art
    are 8-bit control images already (camera-space normals; light lines on black).
    ProtocolError (field ``job.controls[i].end``) for a row whose End is before its Start."""
    unknown = sorted(set(images) - set(PASS_CONTROLS))
    if unknown:
        raise ValueError(f"no pass control of kind {unknown}; kinds: {PASS_CONTROLS}")
    layers = []
    for kind in (k for k in PASS_CONTROLS if k in images):
        row = control_choice(panel, kind)
        if row.start > row.end:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"{CONTROL_TITLES[kind]} control: End {row.end:g} is before "
                                f"Start {row.start:g}", f"job.controls[{len(layers)}].end")
        depth = dict(convention="z", background_at=BACKGROUND_DEPTH) if kind == "depth" else {}
        layers.append(ControlLayer(kind=kind, image=images[kind],  # type: ignore[arg-type]
                                   model=row.model or None, scale=row.scale, start=row.start,
                                   end=row.end, **depth))  # type: ignore[arg-type]
    return layers


def request_references(panel: PanelSettings, upload: Optional[str]) -> list[ReferenceImage]:
    """The request's ``references``: the panel's reference image (``upload``: its upload
    id; None: no reference picked or sent) with its weight and flavour."""
    if upload is None:
        return []
    return [ReferenceImage(image=upload, weight=panel.reference_weight,
                           flavour=panel.reference_flavour)]  # type: ignore[arg-type]


def size_problem(width: int, height: int, limits: Optional[Limits]) -> Optional[str]:
    """Why the daemon would refuse to make a ``width`` x ``height`` image, naming the panel
    field and the limit; None if it would not. ``limits``: the daemon's (its ``welcome``),
    None before the add-on has connected (then only the multiples of 8 are known)."""
    sides = (("Width", width), ("Height", height))
    for name, value in sides:
        if value % SIZE_MULTIPLE:
            lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
            choices = f"{lower} or {lower + SIZE_MULTIPLE}" if lower else f"{SIZE_MULTIPLE}"
            return (f"{name} {value} is not a multiple of {SIZE_MULTIPLE}, which the daemon "
                    f"needs: use {choices}")
    if limits is None:
        return None
    for name, value in sides:
        if value > limits.max_side:
            return (f"{name} {value} is more than the daemon allows (max_side "
                    f"{limits.max_side})")
    if width * height > limits.max_pixels:
        return (f"Width x Height {width} x {height} is {width * height} pixels, more than the "
                f"daemon allows (max_pixels {limits.max_pixels})")
    return None


def unseen_report(names: list[str], all_of_them: bool = False) -> str:
    """What Project Texture says of selected objects of which the camera sees no face
    (each faces away, lies outside the frame or is hidden): they get nothing."""
    quoted = ", ".join(f"'{name}'" for name in names)
    if all_of_them:
        return (f"the camera sees no face of {quoted} (facing away, outside the frame or "
                "hidden behind something): nothing to project onto")
    left = "it was" if len(names) == 1 else "they were"
    return f"the camera sees no face of {quoted}: left as {left}"


def is_loopback(host: str) -> bool:
    """True for addresses of this machine (no network leaves it)."""
    name = host.strip().strip("[]").lower()
    return name in ("localhost", "::1") or name.startswith("127.")


def settings_from(source: Any) -> PanelSettings:
    """Copy the matching attributes of a PropertyGroup (or any object) into PanelSettings.
    ``loras``: a collection of rows with ``lora_name`` and ``weight`` (the panel's), or
    (name, weight) pairs."""
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(PanelSettings)
              if hasattr(source, f.name)}
    if "loras" in values:
        values["loras"] = lora_rows(values["loras"])
    return PanelSettings(**values)


def lora_rows(rows: Iterable[Any]) -> tuple[tuple[str, float], ...]:
    """(name, weight) of each LoRA row: the panel's rows (``lora_name``, ``weight``) or
    pairs."""
    out = []
    for row in rows:
        if isinstance(row, (tuple, list)):
            name, weight = row
        else:
            name, weight = row.lora_name, row.weight
        out.append((str(name), float(weight)))
    return tuple(out)


def request_loras(rows: Iterable[tuple[str, float]]) -> list[LoraWeight]:
    """The request's ``loras`` for the panel's rows; rows without a LoRA chosen are left out.
    ProtocolError (field ``job.loras``) for more than 8 or a LoRA listed twice."""
    chosen = [(name.strip(), weight) for name, weight in rows if name.strip()]
    if len(chosen) > LORAS_MAX:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"a job takes at most {LORAS_MAX} LoRAs and the panel lists "
                            f"{len(chosen)}: remove {len(chosen) - LORAS_MAX}", "job.loras")
    seen: set[str] = set()
    for index, (name, _) in enumerate(chosen):
        if name in seen:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"LoRA '{name}' is listed twice: remove one row (or give "
                                "the one row the weight you want)", f"job.loras[{index}].name")
        seen.add(name)
    return [LoraWeight(name=name, weight=weight) for name, weight in chosen]


def loras_text(loras: Iterable[LoraWeight]) -> str:
    """The LoRAs of a result as a string to record (IDProperty-friendly): JSON
    ``[[name, weight], ...]``; "" for none."""
    pairs = [[lora.name, lora.weight] for lora in loras]
    return json.dumps(pairs) if pairs else ""


def loras_from_text(text: str) -> tuple[tuple[str, float], ...]:
    """What :func:`loras_text` wrote, as (name, weight) pairs; () for "" or anything
    unreadable."""
    if not text:
        return ()
    try:
        pairs = json.loads(text)
        return tuple((str(name), float(weight)) for name, weight in pairs)
    except (ValueError, TypeError):
        return ()


def build_request(settings: PanelSettings, *, kind: str = "txt2img",
                  init_image: Optional[str] = None, depth_upload: Optional[str] = None,
                  controls: Optional[Mapping[str, str]] = None,
                  reference: Optional[str] = None,
                  width: Optional[int] = None, height: Optional[int] = None,
                  pick_seed: Callable[[int], int] = secrets.randbelow) -> GenerateRequest:
    """The GenerateRequest for the panel settings; ProtocolError names a bad field.

    ``controls``: rendered passes (kind -> upload id) sent as control layers with the
    panel's settings (request_controls); ``depth_upload`` is short for
    ``controls={"depth": id}``, a FLOAT32 upload holding a Blender Z pass. ``reference``:
    the upload id of the panel's reference image. A "random" seed is drawn here with
    ``pick_seed(n)`` (0 <= seed < n), so that it fits Blender.
    """
    if settings.random_seed:
        seed = pick_seed(SEED_MAX + 1)
    elif settings.seed > SEED_MAX:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"must be at most {SEED_MAX} in Blender, got {settings.seed}",
                            "job.seed")
    else:
        seed = settings.seed
    images = dict(controls or {})
    if depth_upload is not None:
        images["depth"] = depth_upload
    request = GenerateRequest(
        kind=kind,  # type: ignore[arg-type]
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        model=settings.model or None,
        width=width if width is not None else settings.width,
        height=height if height is not None else settings.height,
        steps=settings.steps,
        guidance=settings.guidance,
        seed=seed,
        scheduler=settings.scheduler,  # type: ignore[arg-type]
        batch_size=settings.batch_size,
        strength=settings.strength,
        init_image=init_image,
        tiling=settings.tiling,  # type: ignore[arg-type]
        controls=request_controls(settings, images),
        references=request_references(settings, reference),
        preview_every=settings.preview_every,
        output_format="raw",
        cache_interval=settings.cache_interval,
        loras=request_loras(settings.loras),
        sampler_preset=settings.sampler_preset or None,  # type: ignore[arg-type]
    )
    validate(request, "job")
    return request


def file_stem(image_name: str) -> str:
    """A file name (without extension) for an image datablock's name, safe on every
    system: letters, digits and ' _-.' kept, anything else '_' (also '#', which Blender
    reads as a frame number in image paths)."""
    stem = re.sub(r"[^\w .-]", "_", image_name, flags=re.ASCII).strip(" .")
    return stem or "image"


def image_name(prompt: str, seed: int, index: int = 0, batch_size: int = 1) -> str:
    """A datablock name that says what made the image: first words of the prompt + seed."""
    return _named(prompt, f" {seed}" + (f" #{index + 1}" if batch_size > 1 else ""))


def preview_name(prompt: str) -> str:
    """The name of an image that shows a job's previews until its result arrives."""
    return _named(prompt, " (preview)")


def _named(prompt: str, suffix: str) -> str:
    words = re.sub(r"\s+", " ", prompt).strip() or "untitled"
    room = NAME_LIMIT - len(suffix)
    while len(words.encode("utf-8")) > room:
        words = words[:-1]
    return words.rstrip() + suffix


def result_record(result: Result, index: int, seed: int) -> dict[str, Any]:
    """What to store on a result image so it can be regenerated (IDProperty-friendly)."""
    params = result.params
    record = {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "model": result.model,
        "kind": params.kind,
        "width": params.width,
        "height": params.height,
        "steps": params.steps,
        "guidance": params.guidance,
        "seed": seed,
        "scheduler": params.scheduler,
        "strength": params.strength,
        "tiling": result.tiling,
        "cache_interval": params.cache_interval,
        "loras": loras_text(params.loras),
        "sampler_preset": params.sampler_preset or "",
        "pass_controls": pass_controls_text(params.controls),
        "batch_index": index,
        "job_id": result.job_id,
    }
    depth = depth_model_of(params)
    if depth is not None:   # depth-conditioned: which conditioner ran it
        record["control_model"] = depth
    return record


def depth_model_of(params: GenerateRequest) -> Optional[str]:
    """The depth model a job asked for ("" = the daemon's default), from its depth control
    (or the older ``control`` of a ``depth`` job); None for a job without depth."""
    for layer in params.controls:
        if layer.kind == "depth":
            return layer.model or ""
    if params.depth is not None:
        return (params.control.model if params.control is not None else None) or ""
    return None


def settings_from_record(record: Mapping[str, Any], base: PanelSettings) -> PanelSettings:
    """Panel settings that regenerate a recorded image: same prompt, seed, size, model."""
    known = {f.name for f in dataclasses.fields(PanelSettings)}
    values = {k: record[k] for k in record.keys() if k in known}
    if "loras" in values:
        values["loras"] = loras_from_text(str(values["loras"]))
    values.update(pass_controls_from_text(str(record.get("pass_controls", ""))))
    values["random_seed"] = False
    values["batch_size"] = 1
    return dataclasses.replace(base, **values)


# The pass controls besides depth (depth has DEPTH_FIELDS, recorded for depth results only).
RECORDED_CONTROLS = tuple(kind for kind in PASS_CONTROLS if kind != "depth")


def pass_controls_text(layers: Iterable[ControlLayer]) -> str:
    """The normal and line-art controls of a result as a string to record
    (IDProperty-friendly): JSON ``[[kind, scale, start, end, model], ...]``, model "" for
    the daemon's default; "" for none."""
    rows = [[layer.kind, layer.scale, layer.start, layer.end, layer.model or ""]
            for layer in layers if layer.kind in RECORDED_CONTROLS]
    return json.dumps(rows) if rows else ""


def pass_controls_from_text(text: str) -> dict[str, Any]:
    """Panel values (CONTROL_FIELDS) that send what :func:`pass_controls_text` recorded:
    those rows ticked with their settings, the other recorded kinds unticked; {} for ""
    (a result made without them leaves the panel's rows as they are) or anything
    unreadable."""
    if not text:
        return {}
    try:
        rows = {str(kind): (float(scale), float(start), float(end), str(model))
                for kind, scale, start, end, model in json.loads(text)}
    except (ValueError, TypeError):
        return {}
    values: dict[str, Any] = {}
    for kind in RECORDED_CONTROLS:
        use, *names = CONTROL_FIELDS[kind]
        values[use] = kind in rows
        if kind in rows:
            values.update(zip(names, rows[kind]))
    return values


def conditioners_for(models: Iterable[ModelInfo], kind: str) -> list[tuple[str, str]]:
    """(name, family) of the ControlNets and T2I-Adapters for control ``kind`` among the
    daemon's models, in the daemon's order."""
    return [(m.name, m.family) for m in models
            if serves_control(m.family, m.control_kind, kind)]


def depth_conditioners(models: Iterable[ModelInfo]) -> list[tuple[str, str]]:
    """(name, family) of the depth ControlNets and T2I-Adapters among the daemon's models."""
    return conditioners_for(models, "depth")


EnumItem = tuple[str, str, str, int]


class NameNumbers:
    """Stable item numbers for names (a dynamic enum stores a number); "" is 0. The lists
    handed to Blender stay referenced (Blender keeps only pointers into their strings): the
    newest few, and the current one is handed out again while nothing changed."""

    KEEP = 8

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {"": 0}
        self._names: dict[int, str] = {0: ""}
        self.items: list[EnumItem] = []
        self._previous: list[list[EnumItem]] = []

    def number(self, name: str) -> int:
        if name not in self._numbers:
            self._numbers[name] = len(self._numbers)
            self._names[self._numbers[name]] = name
        return self._numbers[name]

    def name(self, number: int) -> Optional[str]:
        return self._names.get(number)

    def _unlisted(self, chosen: str, listed: set[str], listed_now: bool, what: str,
                  hint: str = "") -> list[EnumItem]:
        """``chosen`` as an item of its own when the daemon's list of ``what`` lacks it,
        saying whether it is missing there or not checked yet."""
        if not chosen or chosen in listed:
            return []
        note = "not listed by the daemon" if listed_now else "not checked yet"
        return [(chosen, f"{chosen} ({note})",
                 f"Chosen before; the daemon lists its {what} once connected{hint}",
                 self.number(chosen))]

    def _keep(self, items: list[EnumItem]) -> list[EnumItem]:
        if items != self.items:
            self._previous = (self._previous + [self.items])[-self.KEEP:]
            self.items = items
        return self.items


class ControlModelMenu(NameNumbers):
    """The items of a control's model dropdown (Depth Model, and the Normal and Line Art
    rows' models; a Blender dynamic enum), for control ``kind``.

    Items are ``(identifier, label, description, number)``. The chosen name itself is kept
    elsewhere (a string property); the dropdown shows and sets it through the numbers, and
    each name keeps its number for as long as the add-on runs, so a list that changes
    between drawing the menu and picking from it cannot pick the wrong model. A chosen
    name the daemon does not list (no longer there, or no list yet) stays in the menu, so
    it is shown rather than lost. Blender keeps pointers into the strings of the list it
    was given, not references: the lists handed out stay referenced (``NameNumbers``), or
    Blender would read freed memory.
    """

    def __init__(self, kind: str = "depth") -> None:
        super().__init__()
        self.kind = kind

    def build(self, conditioners: Iterable[tuple[str, str]], chosen: str,
              listed_now: bool = True) -> list[EnumItem]:
        """Daemon default, ``conditioners`` (name, family), and ``chosen`` if they lack it;
        ``listed_now`` False: no list from the daemon yet (not connected)."""
        items = [(DEPTH_MODEL_DEFAULT, "Daemon default", CONTROL_DEFAULT_HELP[self.kind], 0)]
        listed = set()
        for name, family in conditioners:
            if name in listed or family not in CONDITIONER_KINDS:
                continue
            listed.add(name)
            kind, description = CONDITIONER_KINDS[family]
            items.append((name, f"{name} ({kind})", description, self.number(name)))
        if chosen and chosen not in listed and listed_now:
            items.append((chosen, f"{chosen} (not listed by the daemon)",
                          f"Chosen before, but the daemon does not list it now: a {self.kind} "
                          "job with it may fail", self.number(chosen)))
        elif chosen and chosen not in listed:
            items.append((chosen, chosen, f"Not checked yet: the daemon's {self.kind} models "
                          "are listed once connected (refresh button)", self.number(chosen)))
        return self._keep(items)


# ---------------------------------------------------------------- LoRAs and sampler presets
LORA_NONE = "NONE"   # the LoRA menu's identifier for a row with no LoRA chosen yet
LORA_HELP = ("Which of the daemon's LoRAs this row applies: those made for the family of the "
             "model the job uses (SD1.5, SDXL, ...). The list comes from the daemon when the "
             "add-on connects (Connect button)")
LORA_WEIGHT_HELP = ("How strongly this LoRA changes the image: 1 = as trained, 0 = not at all, "
                    "negative values push away from its style")
# What each sampler preset sets (PROTOCOL.md 4.3): scheduler, steps, guidance, what for.
SAMPLER_PRESET_INFO = {
    "lightning_4": ("euler", 4, 1.0, "SDXL-Lightning models and LoRAs"),
    "lightning_8": ("euler", 8, 1.0, "SDXL-Lightning models and LoRAs"),
    "lcm_4": ("lcm", 4, 1.0, "LCM models and LCM-LoRAs"),
    "lcm_8": ("lcm", 8, 1.0, "LCM models and LCM-LoRAs"),
    "turbo_1": ("euler_a", 1, 1.0, "SD-Turbo and SDXL-Turbo models"),
    "hyper_8": ("ddim", 8, 1.0, "Hyper-SD 8-step LoRAs"),
    "schnell_4": ("euler", 4, 0.0, "FLUX.1-schnell models"),
    "turbo_4": ("euler", 4, 0.0, "SD3.5 Large Turbo models"),
}
SAMPLER_PRESET_NONE = "NONE"   # the preset menu's identifier for "no preset"
SAMPLER_PRESET_HELP = ("A few-step sampling recipe for distilled models and LoRAs (Lightning, "
                       "LCM, Turbo, Hyper-SD): it overrides Steps, Guidance and Scheduler. "
                       "None: the panel's own. The daemon lists the presets it knows when the "
                       "add-on connects")


def preset_summary(name: str) -> str:
    """What a sampler preset sets, e.g. 'euler, 4 steps, guidance 1.0'; "" if unknown."""
    info = SAMPLER_PRESET_INFO.get(name)
    if info is None:
        return ""
    scheduler, steps, guidance, _ = info
    return f"{scheduler}, {steps} step{'s' if steps != 1 else ''}, guidance {guidance:g}"


def daemon_loras(models: Iterable[ModelInfo]) -> list[tuple[str, str]]:
    """(name, family) of the LoRAs among the daemon's models, in the daemon's order."""
    return [(m.name, m.family) for m in models if getattr(m, "kind", "") == "lora"]


class LoraMenu(NameNumbers):
    """The items of a LoRA row's dropdown (one list for every row, so drawing several rows
    hands Blender the same list): "(choose a LoRA)", the daemon's LoRAs made for the
    model's family, then each row's chosen name the list lacks, saying why."""

    def build(self, loras: Iterable[tuple[str, str]], model_family: Optional[str],
              chosen: Iterable[str], listed_now: bool = True) -> list[EnumItem]:
        items = [(LORA_NONE, "(choose a LoRA)", "No LoRA: this row sends nothing", 0)]
        families: dict[str, str] = {}
        for name, family in loras:
            families.setdefault(name, family)
        listed = set()
        for name, family in families.items():
            if name and fits(family, model_family):
                listed.add(name)
                items.append((name, name, f"LoRA '{name}' (made for {family})",
                              self.number(name)))
        for name in dict.fromkeys(chosen):
            if not name or name in listed:
                continue
            listed.add(name)
            if name in families:
                label = f"{name} (made for {families[name]})"
                note = (f"Made for {families[name]} models, not this model's family "
                        f"({model_family}): the daemon will refuse the job")
            elif listed_now:
                label = f"{name} (not listed by the daemon)"
                note = "Chosen before, but the daemon does not list it now: the job may fail"
            else:
                label = name
                note = "Not checked yet: the daemon's LoRAs are listed once connected"
            items.append((name, label, note, self.number(name)))
        return self._keep(items)


class SamplerPresetMenu(NameNumbers):
    """The items of the Sampler Preset dropdown: None, then the presets the daemon lists
    (``welcome.sampler_presets``), then the chosen one if it lacks it."""

    def build(self, presets: Iterable[str], chosen: str,
              listed_now: bool = True) -> list[EnumItem]:
        items = [(SAMPLER_PRESET_NONE, "None",
                  "No preset: the panel's Steps, Guidance and Scheduler", 0)]
        listed = set()
        for name in presets:
            if not name or name in listed:
                continue
            listed.add(name)
            summary = preset_summary(name)
            purpose = SAMPLER_PRESET_INFO.get(name, ("", 0, 0.0, ""))[3]
            description = (f"{summary}, for {purpose}; overrides Steps, Guidance and Scheduler"
                           if summary else "Overrides Steps, Guidance and Scheduler")
            items.append((name, name, description, self.number(name)))
        return self._keep(items + self._unlisted(chosen, listed, listed_now, "presets"))
