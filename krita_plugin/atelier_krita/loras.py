"""LoRAs and sampler presets: what the docker offers and what a job sends.

Pure functions of the daemon's lists (its ``models`` entries of kind "lora", its
``welcome.sampler_presets``) and the painter's choices, tested without Krita.
"""

from __future__ import annotations

from typing import Iterable, Optional

from .families import family_label
from .protocol.families import fits
from .protocol.messages import LORA_WEIGHT_MAX, LORAS_MAX, LoraWeight, ModelInfo

# One LoRA row of the docker: the LoRA's name as the daemon lists it, and its weight.
LoraRow = tuple[str, float]

LORA_NONE_LABEL = "(choose a LoRA)"
LORA_HELP = ("Which of the daemon's LoRAs this row applies: those made for the family of "
             "the job's model (SD1.5, SDXL, ...), from the daemon's model folders")
LORA_WEIGHT_HELP = (f"How strongly the LoRA changes the image: 1 = as trained, 0 = not at "
                    f"all, negative pushes away from its style (-{LORA_WEIGHT_MAX:g} to "
                    f"{LORA_WEIGHT_MAX:g})")
LORAS_FULL = (f"A job takes at most {LORAS_MAX} LoRAs: remove a row (\u2715) before adding "
              "another")
LORA_UNLISTED = "not listed by the daemon"
LORA_OTHER_FAMILY = "made for {family} models"

PRESET_NONE_LABEL = "None"
PRESET_HELP = ("A few-step sampling recipe for distilled models and LoRAs (Lightning, LCM, "
               "Turbo, Hyper-SD): it sets the steps, guidance and scheduler itself. None: "
               "Steps and Guidance as set here. The daemon lists the presets it knows.")
PRESET_UNLISTED = "not listed by the daemon"

def daemon_loras(models: Iterable[ModelInfo]) -> list[ModelInfo]:
    """The daemon's LoRAs among its ``models`` entries, in its order."""
    return [info for info in models if info.kind == "lora"]


def lora_choices(models: Iterable[ModelInfo], family: Optional[str],
                 chosen: Optional[str] = None) -> list[tuple[str, Optional[str]]]:
    """A LoRA row's entries as (label, name): "(choose a LoRA)" (None, the row sends
    nothing), then the daemon's LoRAs made for ``family`` (the job's model's), then
    ``chosen`` when they lack it, marked with why once the daemon's list is known."""
    models = list(models)
    choices: list[tuple[str, Optional[str]]] = [(LORA_NONE_LABEL, None)]
    families: dict[str, str] = {}
    for info in daemon_loras(models):
        if info.name not in families:
            families[info.name] = info.family
            if fits(info.family, family):
                choices.append((info.name, info.name))
    if chosen and all(name != chosen for _, name in choices):
        if chosen in families:
            made_for = family_label(families[chosen], families[chosen])
            label = f"{chosen} ({LORA_OTHER_FAMILY.format(family=made_for)})"
        elif models:
            label = f"{chosen} ({LORA_UNLISTED})"
        else:
            label = chosen          # the daemon's list is not known yet
        choices.append((label, chosen))
    return choices


def check_loras(loras: Iterable[LoraRow]) -> None:
    """ValueError naming the problem for LoRA rows a job cannot take: more than
    LORAS_MAX, a weight out of range, no name, or one LoRA twice."""
    rows = list(loras)
    if len(rows) > LORAS_MAX:
        raise ValueError(f"a job takes at most {LORAS_MAX} LoRAs, {len(rows)} are chosen: "
                         f"remove {len(rows) - LORAS_MAX}")
    seen: set[str] = set()
    for name, weight in rows:
        if not name:
            raise ValueError("a LoRA row without a LoRA sends nothing and is not kept")
        if not -LORA_WEIGHT_MAX <= weight <= LORA_WEIGHT_MAX:
            raise ValueError(f"LoRA '{name}' has weight {weight:g}; weights go from "
                             f"-{LORA_WEIGHT_MAX:g} to {LORA_WEIGHT_MAX:g}")
        if name in seen:
            raise ValueError(f"LoRA '{name}' is chosen twice: remove one row (or give the "
                             "one row the weight you want)")
        seen.add(name)


def request_loras(loras: Iterable[LoraRow]) -> list[LoraWeight]:
    """The request's ``loras`` for the docker's rows."""
    return [LoraWeight(name=name, weight=float(weight)) for name, weight in loras]


def loras_text(loras: Iterable[LoraRow]) -> str:
    """LoRAs as History shows them: 'tiny_style 0.5, other 1'."""
    return ", ".join(f"{name} {weight:g}" for name, weight in loras)


def preset_choices(presets: Iterable[str], chosen: Optional[str],
                   listed_now: bool) -> list[tuple[str, Optional[str]]]:
    """The Sampler preset field's entries as (label, name): None, the daemon's presets
    (``welcome.sampler_presets``), then ``chosen`` when the daemon lacks it (marked so
    once connected: ``listed_now``)."""
    choices: list[tuple[str, Optional[str]]] = [(PRESET_NONE_LABEL, None)]
    for name in dict.fromkeys(presets):
        if name:
            choices.append((name, name))
    if chosen and all(name != chosen for _, name in choices):
        choices.append((f"{chosen} ({PRESET_UNLISTED})" if listed_now else chosen, chosen))
    return choices


def preset_override_note(preset: Optional[str]) -> str:
    """Why a field a sampler preset decides is greyed out; "" without a preset."""
    if not preset:
        return ""
    return (f"Set by the sampler preset {preset}, which chooses the steps, guidance and "
            f"scheduler itself. Choose {PRESET_NONE_LABEL} under Sampler preset to set "
            "them here.")
