"""Control layers, reference images and regions: what steers a job beside the prompt.

The docker keeps three lists of rows (``ControlRow``, ``ReferenceRow``, ``RegionRow``) that
name the document's layers by ``uniqueId`` (they survive renaming, and saving and reopening
a .kra) and the choices made for each. Here: the rows, their limits, the request fields they
become (PROTOCOL.md 4.4, 4.6, 4.7), and how they are saved with the document (a small JSON
annotation). Pure functions, tested without Krita.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Optional

from .protocol.messages import (CONTROL_KINDS, CONTROLS_MAX, REFERENCE_WEIGHT_MAX,
                                REFERENCES_MAX, REGIONS_MAX, ControlLayer, ReferenceImage,
                                Region)

# The selection, not a layer, as a control's image.
SELECTION = "selection"
SELECTION_LABEL = "(selection)"
# Where the rows are kept in a document: Krita Document annotations survive .kra files.
ANNOTATION_TYPE = "atelier"
ANNOTATION_DESCRIPTION = "Atelier: control layers, reference images and regions"
ANNOTATION_VERSION = 1
FLAVOURS = ("content", "style")
# A line-art kind's image as painted: dark lines on a light ground (``invert``).
LINE_KINDS = ("lineart", "scribble", "softedge", "canny")
REFERENCE_SIDE = 512     # a reference goes up at most this long a side (the encoder takes 224)

CONTROL_HELP = ("A layer (or the selection) whose picture steers the composition: line art, "
                "a sketch, edges, a depth or normal map. Hidden from the canvas a job reads.")
CONTROL_KIND_HELP = ("What the layer shows; the daemon needs a control model of this kind "
                     "(only the kinds it announces are offered)")
CONTROL_STRENGTH_HELP = "How strongly it steers: 0 = not at all, 1 = as trained, up to 2"
CONTROL_RANGE_HELP = "The share of the steps it steers, from start to end (0 to 1)"
CONTROL_INVERT_HELP = ("Dark lines on a light ground (as drawn): the daemon inverts them; "
                       "off for light lines on black (as 'Generate from image' makes)")
CONTROL_PREPROCESS_HELP = ("The layer is a plain picture: the daemon makes the control image "
                           "from it at each job (edges, line art, ...)")
CONTROL_FROM_IMAGE_HELP = ("Make this kind's control image from the canvas now, as a new layer "
                           "to edit by hand; the row then uses that layer")
CONTROLS_FULL = (f"A job takes at most {CONTROLS_MAX} control layers: remove a row (\u2715) "
                 "before adding another")
REFERENCE_HELP = ("A picture whose subject (content) or style the job borrows (IP-Adapter), "
                  f"at a weight from 0 to {REFERENCE_WEIGHT_MAX:g}")
REFERENCES_FULL = f"A job takes at most {REFERENCES_MAX} reference images: remove one first"
REGION_HELP = ("A layer or group whose painted (non-transparent) area gets its own prompt; "
               "the main prompt governs the rest")
REGIONS_FULL = f"A job takes at most {REGIONS_MAX} regions: remove one first"


@dataclass(frozen=True)
class ControlRow:
    """One control layer: ``layer`` a uniqueId (or SELECTION), ``name`` its name when
    chosen (shown while the layer is gone)."""
    layer: str
    name: str = ""
    kind: str = "lineart"
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    invert: bool = False
    preprocess: bool = False


@dataclass(frozen=True)
class ReferenceRow:
    """One reference image: a layer (``layer`` a uniqueId) or an image file (``path``)."""
    layer: str = ""
    path: str = ""
    name: str = ""
    weight: float = 0.6
    flavour: str = "content"


@dataclass(frozen=True)
class RegionRow:
    """One region: a layer or group (uniqueId) whose alpha is the mask, and its prompts."""
    layer: str
    name: str = ""
    prompt: str = ""
    negative_prompt: str = ""      # "" = the job's


@dataclass(frozen=True)
class Guides:
    """Everything of a job that steers beside the prompt, as the docker's rows hold it
    (as edited: ``check_guides`` says what a job cannot take, when one starts)."""
    controls: tuple[ControlRow, ...] = ()
    references: tuple[ReferenceRow, ...] = ()
    regions: tuple[RegionRow, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.controls or self.references or self.regions)


def offered_kinds(capabilities: Iterable[str]) -> list[str]:
    """The control kinds the daemon runs (``control:<kind>`` in its welcome), in the
    protocol's order."""
    announced = set(capabilities)
    return [kind for kind in CONTROL_KINDS if f"control:{kind}" in announced]


def check_guides(guides: Guides, *, depth: bool = False) -> None:
    """ValueError naming the row and the limit for rows a job cannot take; ``depth``: the
    job also sends a depth map, which counts as a control."""
    limit = CONTROLS_MAX - (1 if depth else 0)
    if len(guides.controls) > limit:
        extra = " beside the depth map" if depth else ""
        raise ValueError(f"a job takes at most {limit} control layers{extra}, "
                         f"{len(guides.controls)} are set: remove {len(guides.controls) - limit}")
    for number, row in enumerate(guides.controls, 1):
        what = f"control layer {number} ('{row.name or row.layer}')"
        if not row.layer:
            raise ValueError(f"{what} has no layer: pick one in its row or remove it")
        if row.kind not in CONTROL_KINDS:
            raise ValueError(f"{what} has kind {row.kind!r}; kinds are {', '.join(CONTROL_KINDS)}")
        if not 0.0 <= row.scale <= 2.0:
            raise ValueError(f"{what} has strength {row.scale:g}; strengths go from 0 to 2")
        if not 0.0 <= row.start < row.end <= 1.0:
            raise ValueError(f"{what} steers from {row.start:g} to {row.end:g}; the range "
                             "starts before it ends, within 0 to 1")
    if len(guides.references) > REFERENCES_MAX:
        raise ValueError(f"a job takes at most {REFERENCES_MAX} reference images, "
                         f"{len(guides.references)} are set")
    for number, ref in enumerate(guides.references, 1):
        what = f"reference {number} ('{ref.name or ref.path or ref.layer}')"
        if bool(ref.layer) == bool(ref.path):
            raise ValueError(f"{what} needs a layer or an image file (one of them)")
        if not 0.0 <= ref.weight <= REFERENCE_WEIGHT_MAX:
            raise ValueError(f"{what} has weight {ref.weight:g}; weights go from 0 to "
                             f"{REFERENCE_WEIGHT_MAX:g}")
        if ref.flavour not in FLAVOURS:
            raise ValueError(f"{what} has flavour {ref.flavour!r}; flavours are "
                             f"{', '.join(FLAVOURS)}")
    if len(guides.regions) > REGIONS_MAX:
        raise ValueError(f"a job takes at most {REGIONS_MAX} regions, {len(guides.regions)} "
                         "are set")
    for number, region in enumerate(guides.regions, 1):
        if not region.layer:
            raise ValueError(f"region {number} has no layer: pick one in its row or remove it")


def request_controls(rows: Iterable[ControlRow], uploads: Iterable[str]) -> list[ControlLayer]:
    """The request's ``controls`` for the rows whose images went up under ``uploads``."""
    return [ControlLayer(kind=row.kind, image=upload, scale=row.scale,  # type: ignore[arg-type]
                         start=row.start, end=row.end, invert=row.invert,
                         preprocess=row.preprocess)
            for row, upload in _paired(rows, uploads, "control layer")]


def request_references(rows: Iterable[ReferenceRow],
                       uploads: Iterable[str]) -> list[ReferenceImage]:
    return [ReferenceImage(image=upload, weight=row.weight,
                           flavour=row.flavour)  # type: ignore[arg-type]
            for row, upload in _paired(rows, uploads, "reference")]


def request_regions(rows: Iterable[RegionRow], uploads: Iterable[str]) -> list[Region]:
    return [Region(mask=upload, prompt=row.prompt, negative_prompt=row.negative_prompt or None)
            for row, upload in _paired(rows, uploads, "region")]


def _paired(rows: Iterable[Any], uploads: Iterable[str], what: str) -> list[tuple[Any, str]]:
    rows, uploads = list(rows), list(uploads)
    if len(rows) != len(uploads) or not all(uploads):
        raise ValueError(f"{len(rows)} {what} row(s) need as many uploads first, "
                         f"got {len(uploads)}")
    return list(zip(rows, uploads))


def guides_text(guides: Guides) -> str:
    """What History shows: 'controls lineart 1, canny 0.5 | 1 reference | 2 regions'."""
    parts = []
    if guides.controls:
        parts.append("controls " + ", ".join(f"{row.kind} {row.scale:g}"
                                             for row in guides.controls))
    if guides.references:
        count = len(guides.references)
        parts.append(f"{count} reference{'s' if count > 1 else ''}")
    if guides.regions:
        count = len(guides.regions)
        parts.append(f"{count} region{'s' if count > 1 else ''}")
    return " | ".join(parts)


# ------------------------------------------------------------------ saved with the document
def to_annotation(guides: Guides) -> bytes:
    """The rows as the document's annotation (UTF-8 JSON)."""
    data = {"version": ANNOTATION_VERSION,
            "controls": [asdict(row) for row in guides.controls],
            "references": [asdict(row) for row in guides.references],
            "regions": [asdict(row) for row in guides.regions]}
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def from_annotation(data: bytes) -> Guides:
    """The rows a document's annotation holds; ValueError saying what is wrong with it
    (the docker then starts with no rows and says so). Unknown keys are ignored, so a
    newer plugin's annotation still loads what this one knows."""
    if not data:
        return Guides()
    try:
        loaded = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the document's Atelier settings are not JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise ValueError("the document's Atelier settings are not a JSON object")
    version = loaded.get("version")
    if not isinstance(version, int) or version > ANNOTATION_VERSION:
        raise ValueError(f"the document's Atelier settings are version {version!r}; this "
                         f"plugin reads version {ANNOTATION_VERSION}")
    try:
        return Guides(tuple(_row(ControlRow, item) for item in loaded.get("controls", [])),
                      tuple(_row(ReferenceRow, item) for item in loaded.get("references", [])),
                      tuple(_row(RegionRow, item) for item in loaded.get("regions", [])))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the document's Atelier settings cannot be used: {exc}") from None


def _row(cls: type, item: Any) -> Any:
    if not isinstance(item, dict):
        raise TypeError(f"a {cls.__name__} is a JSON object, got {item!r:.60}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in item.items():
        if key not in known:
            continue
        expected = type(known[key].default) if key != "layer" else str
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TypeError(f"{cls.__name__}.{key} is {type(value).__name__}, "
                            f"not {expected.__name__}")
        values[key] = value
    return cls(**values)


def control_layer_name(kind: str) -> str:
    """The name of the layer a control row's "Generate from image" adds."""
    return f"{kind} control (from image)"


def kind_choices(offered: Iterable[str], chosen: Optional[str],
                 listed_now: bool) -> list[tuple[str, Optional[str]]]:
    """A control row's kind entries as (label, kind): the daemon's kinds (all kinds while
    it has not said), then ``chosen`` when the daemon lacks it, marked so once connected."""
    kinds = list(offered) if listed_now else list(CONTROL_KINDS)
    choices: list[tuple[str, Optional[str]]] = [(kind, kind) for kind in kinds]
    if chosen and chosen not in kinds:
        choices.append((f"{chosen} (not run by this daemon)" if listed_now else chosen, chosen))
    return choices


def layer_choices(layers: Iterable[tuple[str, str]], chosen: Optional[str], chosen_name: str,
                  selection: bool = False) -> list[tuple[str, Optional[str]]]:
    """A row's layer entries as (label, uniqueId): the selection first where it may be
    chosen, then the document's layers (name, uniqueId); a ``chosen`` layer that is not
    there (deleted, or another document in front) stays, marked as missing."""
    choices: list[tuple[str, Optional[str]]] = [(SELECTION_LABEL, SELECTION)] if selection else []
    choices += [(name, uid) for name, uid in layers]
    if chosen and all(uid != chosen for _, uid in choices):
        choices.append((f"{chosen_name or '?'} (missing)", chosen))
    return choices
