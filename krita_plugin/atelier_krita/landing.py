"""Putting a large result into a document a piece at a time, so Qt's thread (Krita's UI)
is never held long by the plugin.

An upscale to 8192x8192 is 256 MB of pixels. Written in one go and added as a layer, it
held Krita's main loop for seconds. A ``Landing`` is the same work as a list of small
steps that the docker's timer runs a slice at a time (``advance``), returning to Qt's
event loop between slices: the new layer is made outside the document, its pixels
written band by band (1 MB each, a few milliseconds), and only then does the document
change, in the steps that Krita's API offers no smaller form of (scaling the image,
adding the layer: each one step in the undo history). Those are ``heavy`` steps: each
runs in a slice of its own, and they run back to back, so the document is never left
scaled without its layer. Until they run, cancelling leaves the document as it was.

No Krita here: the steps are callables the controller builds from ``host.py``'s calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

SLICE_S = 0.02          # the plugin's own work in one slice of the docker's timer


@dataclass(frozen=True)
class Step:
    """One piece of a landing: ``kind`` names it in the timings ("write", "scale",
    "place", ...); a ``heavy`` step is one Krita call that cannot be cut smaller."""
    kind: str
    run: Callable[[], Any]
    heavy: bool = False
    note: str = ""          # what the docker says while it runs (a heavy step: seconds)


@dataclass
class StepTimes:
    """The seconds a kind of step took: the longest one, all of them, how many."""
    longest: float = 0.0
    total: float = 0.0
    count: int = 0

    def add(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)
        self.total += seconds
        self.count += 1


@dataclass
class Landing:
    """Steps run in order, a slice at a time. ``times`` holds each kind's seconds on
    Qt's thread (what the landing held it for), ``slice_longest`` the longest slice."""
    steps: list[Step]
    done: int = 0
    times: dict[str, StepTimes] = field(default_factory=dict)
    slice_longest: float = 0.0
    _running: bool = False

    @property
    def finished(self) -> bool:
        return self.done >= len(self.steps)

    @property
    def progress(self) -> tuple[int, int]:
        return self.done, len(self.steps)

    @property
    def running(self) -> bool:
        """A step is running (this is a call from inside it: Krita's heavy calls run Qt's
        events while they wait)."""
        return self._running

    @property
    def next_note(self) -> str:
        """The note of the step the next slice starts with ("" when none, or finished)."""
        return "" if self.finished else self.steps[self.done].note

    def advance(self, budget_s: float = SLICE_S) -> bool:
        """Run steps for about ``budget_s`` (a heavy step alone, whatever it takes; the
        heavy steps that follow it at once); True once every step has run. A call made
        while a step runs (Krita's heavy calls run Qt's events while they wait, and so
        the docker's timer) does nothing."""
        if self._running or self.finished:
            return self.finished
        self._running = True
        began = time.perf_counter()
        last_heavy: Optional[bool] = None        # the kind of step this slice ran last
        try:
            while not self.finished:
                step = self.steps[self.done]
                if last_heavy is not None and (last_heavy != step.heavy or (
                        not step.heavy and time.perf_counter() - began >= budget_s)):
                    break
                started = time.perf_counter()
                step.run()
                self.times.setdefault(step.kind, StepTimes()).add(time.perf_counter() - started)
                self.done += 1
                last_heavy = step.heavy
        finally:
            self._running = False
            self.slice_longest = max(self.slice_longest, time.perf_counter() - began)
        return self.finished

    def timings(self) -> dict[str, list[float]]:
        """Each kind's [longest s, total s, count], and the longest slice."""
        out = {kind: [round(t.longest, 4), round(t.total, 4), t.count]
               for kind, t in self.times.items()}
        out["slice"] = [round(self.slice_longest, 4), 0.0, 0]
        return out


def layer_steps(make: Callable[[], Any], write: Callable[[Any, Any, bytes], None],
                bands: "tuple[tuple[Any, bytes], ...]") -> tuple[list[Step], Callable[[], Any]]:
    """Steps that make a layer outside the document and write ``bands`` (bounds, BGRA)
    into it one by one, and a function giving the layer once they ran."""
    made: list[Any] = []

    def create() -> None:
        made.append(make())

    def band(bounds: Any, data: bytes) -> Callable[[], None]:
        return lambda: write(made[0], bounds, data)

    steps = [Step("create", create)] + [Step("write", band(bounds, data))
                                        for bounds, data in bands]
    return steps, lambda: made[0]


def upscale_landing(document: Any, name: str, bands: "tuple[tuple[Any, bytes], ...]",
                    canvas: Any, placed_above: Callable[[], Any],
                    on_scale: Optional[Callable[[], None]] = None) -> Landing:
    """An upscale's layer written outside ``document`` (a ``host.KritaDocument``), then
    the image scaled to ``canvas`` and the layer added above ``placed_above()``."""
    steps, layer = layer_steps(lambda: document.new_layer(name), document.write_band, bands)

    def scale() -> None:
        if on_scale is not None:
            on_scale()
        document.scale_image(canvas)

    steps.append(Step("scale", scale, heavy=True,
                      note="Krita is scaling the image, then adds the layer\u2026"))
    steps.append(Step("place", lambda: document.place_layer(layer(), placed_above()),
                      heavy=True))
    return Landing(steps)


def group_landing(document: Any, group_name: str,
                  layers: "list[tuple[str, tuple[tuple[Any, bytes], ...]]]",
                  placed_above: Callable[[], Any]) -> Landing:
    """A group of layers (name, bands), the first on top and the only one shown: every
    layer written outside ``document``, then the group added above ``placed_above()`` and
    the layers into it, bottom first."""
    steps: list[Step] = []
    made: list[tuple[Callable[[], Any], bool]] = []
    for index, (layer_name, bands) in reversed(list(enumerate(layers))):
        more, layer = layer_steps(lambda n=layer_name: document.new_layer(n),
                                  document.write_band, bands)
        steps += more
        made.append((layer, index == 0))
    group: list[Any] = []

    def add_group() -> None:
        group.append(document.place_layer(document.new_group(group_name), placed_above()))

    steps.append(Step("place", add_group, heavy=True, note="Krita is adding the layers\u2026"))
    for layer, shown in made:
        steps.append(Step("place", lambda l=layer, s=shown: document.place_in_group(
            group[0], l(), s), heavy=True))
    return Landing(steps)
