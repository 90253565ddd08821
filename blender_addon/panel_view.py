"""What the sidebar panels show, as plain data. No Blender needed.

``panels.py`` draws; this module decides: which sub-panels exist, the short labels that fit
the sidebar at its default width, the warnings about the image size, the progress bar's
fill and text (with an estimate of the time left), the connection line and its button, the
Faster Sampling hint, and the items of the Model dropdown. Everything here is testable
without Blender (tests/test_blender_panel.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from .settings import EnumItem, NameNumbers

SIZE_MULTIPLE = 8   # the daemon's (PROTOCOL.md: width, height); settings.SIZE_MULTIPLE too

# Labels: the left column of a split row holds about 9 characters at the sidebar's
# default width (Width, Guidance, Scheduler); the panel draws longer ones, up to this
# many, inside full-width fields or on a line of their own.
LABEL_ROOM = 12

# The sub-panels under "Atelier", in order: (id suffix, title, closed at first).
SUBPANELS: tuple[tuple[str, str, bool], ...] = (
    ("prompt", "Prompt", False),
    ("size", "Size & Sampling", False),
    ("texture", "Texture & Projection", False),
    ("controls", "Controls & Reference", False),
    ("assets", "Game Assets", False),
    ("advanced", "Advanced", True),
    ("history", "History", True),
)

# The settings each sub-panel shows, in order, with the label drawn beside each field.
FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "prompt": (("prompt", "Prompt"), ("negative_prompt", "Negative"),
               ("model_choice", "Model")),
    "size": (("width", "Width"), ("height", "Height"), ("steps", "Steps"),
             ("guidance", "Guidance"), ("scheduler", "Scheduler"),
             ("sampler_preset_choice", "Preset"), ("seed", "Seed"),
             ("random_seed", "Random"), ("batch_size", "Images")),
    "texture": (("tiling", "Seamless"), ("apply_to_object", "Apply"),
                ("capture_source", "From"), ("strength", "Strength"),
                ("bake_projection", "Bake to UVs")),
    "controls": (("use_depth", "Depth"), ("control_scale", "Weight"), ("depth_start", "Start"),
                 ("depth_end", "End"), ("depth_model", "Model"),
                 ("use_normal", "Normal"), ("normal_scale", "Weight"),
                 ("normal_start", "Start"), ("normal_end", "End"),
                 ("normal_model_choice", "Model"),
                 ("use_lineart", "Line Art"), ("lineart_scale", "Weight"),
                 ("lineart_start", "Start"), ("lineart_end", "End"),
                 ("lineart_model_choice", "Model"),
                 ("use_reference", "Reference"), ("reference_image", "Image"),
                 ("reference_weight", "Weight"), ("reference_flavour", "Borrow")),
    "assets": (("upscale_mode", "Upscale To"), ("upscale_factor", "Factor"),
               ("upscale_width", "Width"), ("upscale_height", "Height"),
               ("upscaler_choice", "Upscaler"), ("refine_strength", "Refine"),
               ("normal_strength", "Normal Depth")),
    "advanced": (("cache_interval", "Reuse Steps"), ("preview_every", "Previews"),
                 ("model", "Model Path"), ("loras", "LoRAs")),
    "history": (),
}

# The Controls rows, in the panel's order: (kind, the properties of its checkbox, weight,
# start, end and model dropdown), as FIELDS["controls"] lists them.
CONTROL_ROWS: tuple[tuple[str, tuple[str, str, str, str, str]], ...] = tuple(
    (kind, tuple(name for name, _ in FIELDS["controls"][5 * i:5 * i + 5]))  # type: ignore[misc]
    for i, kind in enumerate(("depth", "normal", "lineart")))
CONTROLS_NOTE = ("Render to Image and Live send the passes ticked here; Project Texture "
                 "sends depth always and the others when ticked")

CONNECT = "Connect"
TEST_CONNECTION = "Test Connection"


# Characters of label text that fit one line of the sidebar at its default width.
LINE_ROOM = 28


def wrap(text: str, width: int = LINE_ROOM) -> list[str]:
    """``text`` in lines of at most ``width`` characters (longer words stand alone)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


# ---------------------------------------------------------------- size
def size_warnings(width: int, height: int, max_side: Optional[int] = None,
                  max_pixels: Optional[int] = None) -> list[str]:
    """One short sentence per thing about ``width`` x ``height`` that the daemon refuses:
    sides not multiples of 8 (with the nearest good values), sides over ``max_side`` or a
    pixel count over ``max_pixels`` (the daemon's ``welcome.limits``; None before the
    add-on has connected, when only the multiples of 8 are known)."""
    warnings = []
    for name, value in (("Width", width), ("Height", height)):
        if value % SIZE_MULTIPLE:
            lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
            choices = f"{lower} or {lower + SIZE_MULTIPLE}" if lower else str(SIZE_MULTIPLE)
            warnings.append(f"{name} {value} is not a multiple of {SIZE_MULTIPLE}: "
                            f"use {choices}")
    for name, value in (("Width", width), ("Height", height)):
        if max_side is not None and value > max_side:
            warnings.append(f"{name} {value} is over the daemon's limit of {max_side}")
    if max_pixels is not None and width * height > max_pixels:
        warnings.append(f"{width} x {height} is over the daemon's limit of "
                        f"{max_pixels:,} pixels")
    return warnings


# ---------------------------------------------------------------- progress
class EtaClock:
    """Estimates the time a job has left from when the panel saw its steps go by.

    ``observe`` is called whenever a job's line is drawn; the first step seen starts the
    clock for that job (loading the model and the like is not counted), and the rate since
    then gives the time left. Keeps at most ``keep`` jobs.
    """

    def __init__(self, keep: int = 16) -> None:
        self._seen: dict[str, tuple[float, int]] = {}   # job -> (time, step) first seen
        self._keep = keep

    def observe(self, job: str, step: int, total: int, now: float) -> Optional[float]:
        """Seconds left for ``job`` at ``step`` of ``total``; None until it can tell."""
        if total <= 0 or step <= 0:
            return None
        start = self._seen.get(job)
        if start is None or step < start[1]:   # new, or restarted (fetched again)
            self._seen[job] = (now, step)
            while len(self._seen) > self._keep:
                self._seen.pop(next(iter(self._seen)))
            return None
        started, first_step = start
        if step == first_step or now <= started:
            return None
        per_step = (now - started) / (step - first_step)
        return max(0.0, per_step * (total - step))


def eta_text(seconds: Optional[float]) -> str:
    """'about 12 s left', 'about 2 min left'; '' when unknown."""
    if seconds is None:
        return ""
    if seconds < 1.5:
        return "almost done"
    if seconds < 90:
        return f"about {round(seconds)} s left"
    return f"about {round(seconds / 60)} min left"


@dataclass(frozen=True)
class ProgressView:
    factor: float      # 0..1, how full the bar is
    text: str          # on the bar (4.0+): percentage and time left
    detail: str        # the line above it: the job and its step
    left: str = ""     # the time left alone, under the text bar (before 4.0)


def progress_view(label: str, state_text: str, running: bool, step: int, total: int,
                  eta: Optional[float]) -> ProgressView:
    """The progress bar of one active job: ``running`` with ``step`` of ``total`` fills it;
    before that it is empty and says what the job waits for (``state_text``)."""
    if running and total > 0:
        factor = min(1.0, max(0.0, step / total))
        detail = f"{label}: step {step} of {total}"
        left = eta_text(eta)
        return ProgressView(factor, f"{round(factor * 100)}%" + (f", {left}" if left else ""),
                            detail, left)
    return ProgressView(0.0, "waiting", f"{label}: {state_text}")


def text_bar(factor: float, cells: int = 20) -> str:
    """A bar of characters for Blenders without ``UILayout.progress`` (before 4.0), with
    its percentage; plain ASCII, which every Blender font draws."""
    factor = min(1.0, max(0.0, factor))
    filled = round(factor * cells)
    return "|" * filled + "." * (cells - filled) + f" {round(factor * 100)}%"


def has_progress_widget(layout: object) -> bool:
    """Whether this Blender draws progress bars (``UILayout.progress``, 4.0+); ``layout``:
    a UILayout or its class."""
    rna = getattr(layout, "bl_rna", None)
    if rna is not None:
        return "progress" in rna.functions
    return callable(getattr(layout, "progress", None))


# ---------------------------------------------------------------- connection
@dataclass(frozen=True)
class ConnectionView:
    text: str
    icon: str
    button: str


def connection_view(connected: bool, text: str) -> ConnectionView:
    """The connection line at the top of the panel and its button's label."""
    if connected:
        short = text
        if text.startswith("connected to ") and ": " in text:   # drop the address
            short = text.split(": ", 1)[1]
            first, _, rest = short.partition(", ")
            short = first.split(" on ", 1)[-1] + (f", {rest}" if rest else "")   # and server
        return ConnectionView(f"Connected: {short}", "LINKED", TEST_CONNECTION)
    if text.startswith("connecting"):
        return ConnectionView("Connecting ...", "SORTTIME", CONNECT)
    if text in ("", "not connected"):
        return ConnectionView("Not connected to the daemon", "UNLINKED", CONNECT)
    return ConnectionView(text, "ERROR", CONNECT)


# ---------------------------------------------------------------- faster sampling
def cache_hint(interval: int) -> str:
    """What the Faster Sampling value means for speed and quality."""
    if interval <= 1:
        return "Off: full quality"
    speed = {2: "about 1.5x", 3: "about 1.9x"}.get(interval, "2x or more")
    return f"{speed} faster, small changes in detail"


# ---------------------------------------------------------------- sampler presets, LoRAs
def preset_note(preset: str, summary: str) -> str:
    """The line under the Preset dropdown when a preset is chosen: that it overrides Steps,
    Guidance and Scheduler, and with what (``summary``, e.g. 'euler, 4 steps, guidance 1');
    "" for no preset."""
    if not preset:
        return ""
    return (f"{preset} sets {summary}: overrides Steps, Guidance, Scheduler" if summary
            else f"{preset} overrides Steps, Guidance, Scheduler")


def loras_note(rows: int, chosen: int, limit: int = 8) -> str:
    """The line under the LoRA rows: how many are sent, and the limit when reached."""
    if rows == 0:
        return "No LoRAs: Add LoRA applies one to every job"
    if rows >= limit:
        return f"{chosen} LoRA(s) sent; {limit} rows is the most a job takes"
    if chosen < rows:
        return f"{chosen} LoRA(s) sent; rows without a LoRA send nothing"
    return f"{chosen} LoRA(s) sent with every job"


# ---------------------------------------------------------------- history
def history_text(prompt: str, seed: int) -> str:
    """A history row's text: the seed first, since Blender cuts long text in the middle
    (the thumbnail is the row's icon)."""
    return f"{seed} \u00b7 {prompt.strip() or '(no prompt)'}"


def preview_name(jobs: Sequence[tuple[bool, Sequence[str]]], history: Sequence[str],
                 exists) -> Optional[str]:
    """The image the panel previews: the newest job's image (the preview while it runs, the
    first result when done), else the newest history entry's; only images that ``exists``.
    ``jobs``: (failed or cancelled, image names) oldest first."""
    for lost, names in reversed(jobs):
        if not lost:
            for name in names[:1]:
                if exists(name):
                    return name
    for name in reversed(history):
        if name and exists(name):
            return name
    return None


# ---------------------------------------------------------------- model dropdown
MODEL_CURRENT = "CURRENT"   # the Model menu's identifier for "the daemon's loaded model"
class ModelMenu(NameNumbers):
    """The items of the panel's Model dropdown (a Blender dynamic enum), like
    ``settings.DepthModelMenu``: the chosen name is kept in a string property; each name
    keeps its item number while the add-on runs; a chosen name the daemon does not list
    stays in the menu; the lists handed out stay referenced (``NameNumbers``)."""

    def build(self, models: Iterable[str], skip: Iterable[str], chosen: str,
              listed_now: bool = True, current: str = "") -> list[EnumItem]:
        """The daemon's current model, then ``models`` except the names in ``skip`` (depth
        ControlNets and adapters, which do not make images), then ``chosen`` if missing."""
        label = f"Loaded ({current})" if current else "Loaded model"
        items = [(MODEL_CURRENT, label,
                  "Whatever model the daemon has loaded (atelier serve --model)", 0)]
        skipped, listed = set(skip), set()
        for name in models:
            if name in skipped or name in listed or not name:
                continue
            listed.add(name)
            items.append((name, name, f"The daemon's model '{name}'", self.number(name)))
        return self._keep(items + self._unlisted(chosen, listed, listed_now, "models",
                                                 hint=" (Connect button)"))
