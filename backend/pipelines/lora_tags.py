"""A1111's inline LoRA tags: ``<lora:name:0.8>`` in a prompt -> a ``LoraWeight``.

Pure functions of the text. A tag is ``<lora:NAME>`` (weight 1) or ``<lora:NAME:WEIGHT>``;
it is taken out of the prompt, so the text encoder never sees it. A1111's extra fields
(``<lora:name:te:unet>``, ``lbw=``) are refused rather than half-honoured.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import LORA_WEIGHT_MAX, LORAS_MAX, MODEL_NAME_MAX, GenerateRequest, LoraWeight
from protocol.schema import shorten

# <lora:...> with anything but '>' and '<' inside; the name is everything up to the first ':'.
_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)


@dataclass(frozen=True)
class PromptLoras:
    """A prompt with its inline tags taken out, and the LoRAs they named, in order."""
    text: str
    loras: tuple[LoraWeight, ...]


def _weight(raw: str, tag: str, field: str) -> float:
    try:
        weight = float(raw)
    except ValueError:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"LoRA tag {shorten(tag)}: weight {shorten(raw)!r} is not a number",
                            field) from None
    if not -LORA_WEIGHT_MAX <= weight <= LORA_WEIGHT_MAX:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"LoRA tag {shorten(tag)}: weight {weight:g} is outside "
                            f"-{LORA_WEIGHT_MAX:g}..{LORA_WEIGHT_MAX:g}", field)
    return weight


def extract_lora_tags(prompt: str, field: str = "job.prompt") -> PromptLoras:
    """``prompt`` without its ``<lora:name[:weight]>`` tags, and those tags as LoRAs.
    Raises ProtocolError naming ``field`` for a tag that cannot be read."""
    loras: list[LoraWeight] = []
    for match in _TAG.finditer(prompt):
        tag = match.group(0)
        parts = match.group(1).split(":")
        name = parts[0].strip()
        if not name:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"LoRA tag {shorten(tag)} names no LoRA",
                                field)
        if len(name) > MODEL_NAME_MAX:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"a LoRA tag's name is {len(name)} "
                                f"long, the limit is {MODEL_NAME_MAX}", field)
        if len(parts) > 2:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"LoRA tag {shorten(tag)}: only <lora:name:weight> is supported "
                                f"(no separate text-encoder/UNet weights)", field)
        weight = _weight(parts[1].strip(), tag, field) if len(parts) == 2 else 1.0
        loras.append(LoraWeight(name=name, weight=weight))
    text = _TAG.sub("", prompt)
    if loras:
        text = re.sub(r"[ \t]{2,}", " ", text).strip(" \t,")
    return PromptLoras(text, tuple(loras))


def settle_loras(job: GenerateRequest) -> GenerateRequest:
    """``job`` with its prompts' inline tags moved into ``loras`` (after the listed ones),
    checked: at most ``LORAS_MAX`` in all, each name once. The result has no tags left, so
    settling it again changes nothing."""
    positive = extract_lora_tags(job.prompt, "job.prompt")
    negative = extract_lora_tags(job.negative_prompt, "job.negative_prompt")
    if negative.loras:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "LoRA tags belong in the prompt, not the "
                            "negative prompt", "job.negative_prompt")
    loras = [*job.loras, *positive.loras]
    if len(loras) > LORAS_MAX:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"{len(loras)} LoRAs ({len(job.loras)} listed, {len(positive.loras)} "
                            f"in the prompt), the limit is {LORAS_MAX}",
                            "job.prompt" if positive.loras else "job.loras")
    seen: set[str] = set()
    for index, lora in enumerate(loras):
        if lora.name in seen:
            field = (f"job.loras[{index}].name" if index < len(job.loras) else "job.prompt")
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"LoRA {shorten(lora.name)!r} is named twice; name it once "
                                f"with the weight you want", field)
        seen.add(lora.name)
    if not positive.loras:
        return job
    return dataclasses.replace(job, prompt=positive.text, loras=loras)
