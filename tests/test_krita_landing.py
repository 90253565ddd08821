"""The Krita plugin's landing (krita_plugin/atelier_krita/landing.py): a large result goes
into the document in slices of the docker's timer, the calls Krita cannot cut smaller
alone in theirs. Plain Python (no Krita): a document that records what it is asked to do
stands in for ``host.KritaDocument``; the real one is tested in tests/test_krita_host.py
(upscale_8k) and measured by tests/host/krita/measure_landing.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "krita_plugin"))

from atelier_krita.landing import Landing, Step, group_landing, upscale_landing  # noqa: E402


class Recorder:
    """What a landing asks of the document, in order (the layers are names)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.reentered: list[bool] = []

    def new_layer(self, name: str) -> str:
        self.calls.append(("new_layer", name))
        return name

    def new_group(self, name: str) -> str:
        self.calls.append(("new_group", name))
        return name

    def write_band(self, node: str, bounds: int, data: bytes) -> None:
        self.calls.append(("write", node, bounds))

    def scale_image(self, canvas: str) -> None:
        self.calls.append(("scale", canvas))

    def place_layer(self, node: str, above: str) -> str:
        self.calls.append(("place", node, above))
        return node

    def place_in_group(self, group: str, node: str, visible: bool) -> None:
        self.calls.append(("into", group, node, visible))


def run_all(landing: Landing) -> list[int]:
    """Advance until finished; how many steps each slice ran."""
    sizes = []
    while not landing.finished:
        before = landing.done
        landing.advance(budget_s=10.0)
        sizes.append(landing.done - before)
    return sizes


def test_an_upscale_writes_its_bands_first_then_scales_and_places_in_one_slice():
    doc = Recorder()
    bands = tuple((top, b"x") for top in range(5))
    landing = upscale_landing(doc, "up", bands, "8192x8192", lambda: "top")
    assert landing.next_note == ""                 # writing bands: nothing to say
    landing.advance(budget_s=10.0)
    # what the docker shows while Krita's long calls run
    assert landing.next_note == "Krita is scaling the image, then adds the layer\u2026"
    slices = [6] + run_all(landing)
    assert doc.calls == ([("new_layer", "up")] + [("write", "up", top) for top in range(5)] +
                         [("scale", "8192x8192"), ("place", "up", "top")])
    # the quick steps in one slice (a large budget), then scale and place back to back:
    # the document is never left scaled without its layer
    assert slices == [6, 2]
    assert landing.progress == (8, 8) and landing.next_note == ""
    timings = landing.timings()
    assert set(timings) == {"create", "write", "scale", "place", "slice"}
    assert timings["write"][2] == 5 and timings["scale"][2] == timings["place"][2] == 1


def test_a_slice_stops_at_its_budget_and_the_heavy_steps_wait_for_a_slice_of_their_own():
    ran: list[str] = []

    def slow(name: str) -> Step:
        return Step("write", lambda: (ran.append(name), time.sleep(0.004)))

    steps = [slow(f"w{i}") for i in range(10)] + [Step("place", lambda: ran.append("p"),
                                                       heavy=True)]
    landing = Landing(steps)
    assert not landing.advance(budget_s=0.01)
    assert 1 <= landing.done < 10              # stopped by the budget, not at the end
    while landing.done < 10:
        landing.advance(budget_s=0.01)
    assert ran[-1] != "p" and not landing.finished   # the heavy step did not join a slice
    assert landing.advance(budget_s=0.01) and ran[-1] == "p"
    # a slice that starts with a slow step runs that one step, whatever it takes
    late = Landing([Step("write", lambda: time.sleep(0.02)), Step("write", lambda: None)])
    late.advance(budget_s=0.001)
    assert late.done == 1


def test_an_advance_while_a_step_runs_does_nothing():
    # Krita's heavy calls run Qt's events while they wait, and so the docker's timer:
    # the landing must not start its next step from inside the one running.
    inner: list[bool] = []
    landing: Landing

    def reenter() -> None:
        inner.append(landing.advance())
        inner.append(landing.running)

    landing = Landing([Step("scale", reenter, heavy=True), Step("place", lambda: None,
                                                                heavy=True)])
    assert landing.advance()
    assert inner == [False, True] and landing.done == 2 and not landing.running


def test_a_texture_set_group_gets_its_layers_bottom_first_only_the_first_shown():
    doc = Recorder()
    layers = [("normal", ((0, b"n"),)), ("height", ((0, b"h"),)), ("roughness", ((0, b"r"),))]
    landing = group_landing(doc, "[Texture set] x", layers, lambda: "top")
    run_all(landing)
    written = [call for call in doc.calls if call[0] in ("new_layer", "write")]
    assert written == [("new_layer", "roughness"), ("write", "roughness", 0),
                       ("new_layer", "height"), ("write", "height", 0),
                       ("new_layer", "normal"), ("write", "normal", 0)]
    placed = [call for call in doc.calls if call[0] in ("new_group", "place", "into")]
    assert placed == [("new_group", "[Texture set] x"), ("place", "[Texture set] x", "top"),
                      ("into", "[Texture set] x", "roughness", False),
                      ("into", "[Texture set] x", "height", False),
                      ("into", "[Texture set] x", "normal", True)]
    # nothing is added to the document before every layer is written
    first_place = doc.calls.index(("place", "[Texture set] x", "top"))
    assert all(call[0] != "write" for call in doc.calls[first_place:])
