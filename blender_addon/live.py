"""Live mode: while it is on, the scene is rendered again after each change of the view or
of the scene and sent to the daemon as img2img in the live session "viewport"; the newest
result is shown in one image, "Atelier Live".

A timer (``timer``) looks at a cheap signature of what the camera sees on every tick: the
scene camera and its matrix, the 3D Viewport's view (when Live sees from the View), the
frame, the panel's settings and a count of the depsgraph's updates that are edits (kept by
a ``depsgraph_update_post`` handler). The debounce and latest-wins rule are
``protocol.live``'s, shared with the Krita plugin. The daemon cancels the older jobs of the
session itself (reason "superseded"); those are not reported. Live off cancels the live
job that runs and removes the timer and the handlers; opening a file and disabling the
add-on turn Live off.
"""

from __future__ import annotations

import secrets
import time
import traceback
from typing import TYPE_CHECKING, Any, Hashable, Optional

import bpy

from . import host, live_rules, passes, settings
from .live_rules import LIVE_IMAGE, LIVE_SAMPLES, LIVE_SESSION
from .protocol import GenerateRequest, ImageFrame, ProtocolError
from .protocol.client import ClientError
from .protocol.events import Disconnected, JobDone
from .protocol.live import LIVE_POLL_S, LiveDebounce, LiveResults, is_superseded
from .protocol.messages import Accepted, Cancelled, Error, Progress, Result, Started

if TYPE_CHECKING:
    from .runtime import Session


class LiveMode:
    """The Live mode of one session: whether it is on, for which scene, and its jobs."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self.on = False
        self.scene_name: Optional[str] = None
        self.seed = 0                    # drawn when Live goes on, for a Random seed
        self.debounce = LiveDebounce()
        self.results = LiveResults()
        self.edits = 0                   # depsgraph updates that changed the scene
        self.jobs_sent = 0
        self.results_shown = 0
        self.superseded = 0              # live jobs the daemon replaced by newer ones
        self.problem: Optional[str] = None
        self.shown: Optional[Result] = None          # the daemon's account of the image shown
        self.last_sent: Optional[tuple[str, GenerateRequest, tuple[ImageFrame, ...]]] = None
        self.stopping: set[str] = set()   # job ids Live off cancelled, not confirmed yet
        self.cancelled: list[str] = []    # ... and confirmed
        self._abandoned: set[str] = set()   # refs sent before Live off, not accepted then
        self._capturing = False
        self.capture_seconds = 0.0       # how long the last capture held Blender's thread
        self.sent_at = 0.0               # when the last live job was sent (monotonic)

    # ------------------------------------------------------------ on and off
    def start(self, scene: bpy.types.Scene) -> None:
        """Turn Live on for ``scene``: its state goes to the daemon once it stands still."""
        if self.on:
            self.stop()
        self.on = True
        self.scene_name = scene.name
        self.seed = secrets.randbelow(settings.SEED_MAX + 1)
        self.debounce.reset()
        self.results = LiveResults()
        self.jobs_sent = self.results_shown = self.superseded = 0
        self.problem = None
        self.shown = None
        if not bpy.app.timers.is_registered(timer):
            bpy.app.timers.register(timer, first_interval=0.0, persistent=True)
        for handlers, handler in _handlers():
            if handler not in handlers:
                handlers.append(handler)

    def stop(self) -> None:
        """Turn Live off: the live job the daemon has is cancelled (one it had not taken yet
        is cancelled when it does); timer and handlers go. The live image stays."""
        for handlers, handler in _handlers():
            while handler in handlers:
                handlers.remove(handler)
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
        if not self.on:
            return
        self.on = False
        client = self._session.client
        newest = self.results.newest_id()
        if newest is not None and client is not None and client.connected:
            client.cancel(newest)
            self.stopping.add(newest)
        accepted = set(self.results.by_id.values())
        self._abandoned.update(ref for ref, number in self.results.by_ref.items()
                               if number not in accepted)
        self.results.clear()
        self.debounce.reset()
        self.problem = None

    @property
    def running(self) -> bool:
        """Live jobs are out (or being cancelled): the session pumps at its fast pace."""
        return self.results.running or bool(self.stopping)

    @property
    def idle(self) -> bool:
        """Live is on with nothing waiting: no change to send, no job out."""
        return self.on and not self.debounce.pending and not self.results.running

    def line(self) -> str:
        return live_rules.live_line(self.on, self._session.connection_ok, self.jobs_sent,
                                    self.results_shown, self.results.running, self.problem)

    # ------------------------------------------------------------ the timer
    def tick(self) -> Optional[float]:
        """What the timer runs: look at the scene, send it once it stood still."""
        if not self.on:
            return None
        try:
            self._tick()
        except (host.HostError, ProtocolError, ClientError) as exc:
            self.problem = str(exc)
        except Exception as exc:  # noqa: BLE001  a bug must not stop the timer; shown
            traceback.print_exc()
            self.problem = f"the add-on failed ({type(exc).__name__}: {exc})"
        return LIVE_POLL_S if self.on else None

    def _tick(self) -> None:
        scene = bpy.data.scenes.get(self.scene_name or "")
        if scene is None:
            self.stop()
            return
        now = time.monotonic()
        self.debounce.observe(self.signature(scene), now)
        client = self._session.client
        if client is None or not client.connected or not self.debounce.due(now):
            return
        self.problem = None
        self._send(scene, client)

    def signature(self, scene: bpy.types.Scene) -> Hashable:
        """What the live render depends on, cheaply: compared, never stored for long."""
        camera = scene.camera
        seen_from = (camera.name, tuple(v for row in camera.matrix_world for v in row)) \
            if camera is not None else None
        props = scene.atelier
        view = None
        if props.capture_source == "VIEW":
            area = _view_area()
            if area is not None:
                r3d = area.spaces.active.region_3d
                view = (tuple(v for row in r3d.view_matrix for v in row),
                        r3d.view_perspective, area.spaces.active.lens, area.width, area.height)
        return (seen_from, view, scene.frame_current, self.edits, props.live_strength,
                settings.settings_from(props))

    def note_updates(self, depsgraph: Any) -> None:
        """From the depsgraph handler: count the updates that are edits of the scene (not
        those the live capture makes, nor the live image's)."""
        if self._capturing or not self.on:
            return
        for update in depsgraph.updates:
            if live_rules.counts_as_edit(update.id.bl_rna.identifier):
                self.edits += 1
                return

    def _send(self, scene: bpy.types.Scene, client: Any) -> None:
        props = scene.atelier
        chosen = settings.settings_from(props)
        panel = live_rules.live_settings(chosen, props.live_strength,
                                         self.seed if chosen.random_seed else chosen.seed)
        problem = settings.size_problem(panel.width, panel.height, self._session.limits)
        if problem is not None:
            raise host.HostError(problem)
        view_layer = bpy.context.view_layer if bpy.context.scene == scene \
            else scene.view_layers[0]
        self._capturing = True
        started = time.monotonic()
        try:
            area = _view_area() if props.capture_source == "VIEW" else None
            view = host.area_view_camera(area, panel.width, panel.height) \
                if area is not None else None
            with host.temporary_camera(scene, view_layer, view):
                shot = passes.render_passes(scene, view_layer, panel.width, panel.height,
                                            settings.passes_to_send(panel), color=True,
                                            samples=LIVE_SAMPLES)
            view_layer.update()   # the capture's own changes are evaluated now, uncounted
        finally:
            self._capturing = False
        self.capture_seconds = time.monotonic() - started
        request, uploads = passes.camera_job(shot, panel)
        ref = client.submit(request, uploads, live=LIVE_SESSION)
        self.results.sent(ref)
        self.jobs_sent += 1
        self.sent_at = time.monotonic()
        self.last_sent = (ref, request, tuple(uploads))

    # ------------------------------------------------------------ daemon events
    def handle(self, event: Any) -> bool:
        """Take an event that concerns a live job; False for any other."""
        if isinstance(event, Disconnected):
            # Submits not accepted are lost with the connection, and nobody will confirm the
            # cancels sent for Live off; the scene goes again, as it is, once connected.
            self.results.by_ref = {ref: n for ref, n in self.results.by_ref.items()
                                   if n in self.results.by_id.values()}
            if not event.will_retry:
                self.results.clear()
            self._abandoned.clear()
            self.stopping.clear()
            self.debounce.reset()
            return False
        ref = event.ref if isinstance(event, (Accepted, Error)) else None
        job_id = getattr(event, "job_id", None)
        if ref is not None and ref in self._abandoned:
            self._abandoned.discard(ref)
            if isinstance(event, Accepted):   # taken after Live went off: stop it too
                self._cancel_stopped(event.job_id)
            return True
        if job_id is not None and job_id in self.stopping:
            if isinstance(event, (Cancelled, JobDone, Error)):
                self.stopping.discard(job_id)
                if isinstance(event, Cancelled):
                    self.cancelled.append(job_id)
            return True
        if not self.results.owns(job_id, ref):
            return False
        if isinstance(event, Accepted):
            self.results.accepted(event.ref, event.job_id)
        elif isinstance(event, JobDone):
            if self.results.should_show(event.job_id):
                self._show(event)
            self.results.ended(event.job_id)
        elif isinstance(event, Cancelled):
            if is_superseded(event):
                self.superseded += 1      # a newer state replaced it: nothing to tell
            else:
                self.problem = "the daemon stopped the live job"
            self.results.ended(event.job_id)
        elif isinstance(event, Error):
            self.problem = f"daemon: {event.message}" + (f" [{event.field}]" if event.field
                                                         else "")
            if job_id is not None:
                self.results.ended(job_id)
            if ref is not None:
                self.results.by_ref.pop(ref, None)
        elif not isinstance(event, (Started, Progress)):
            return False
        return True

    def _cancel_stopped(self, job_id: str) -> None:
        client = self._session.client
        if client is not None and client.connected:
            client.cancel(job_id)
            self.stopping.add(job_id)

    def _show(self, done: JobDone) -> None:
        """The newest result into the live image (made, and shown in the Image Editors, the
        first time), with its parameters like any result."""
        frame = done.images[0]
        result = done.result
        seed = next((info.seed for info in result.images if info.index == frame.index),
                    result.params.seed or 0)
        image = bpy.data.images.get(LIVE_IMAGE)
        made = image is None
        if image is None:
            image = host.new_image(LIVE_IMAGE, frame.width, frame.height)
        host.write_rgba8(image, frame.data, frame.width, frame.height)
        image[settings.RECORD_KEY] = settings.result_record(result, frame.index, seed)
        if made:
            host.show_image(image)
        self.shown = result
        self.results_shown += 1
        self.problem = None
        self._session.note_written(image.name)


# ---------------------------------------------------------------- timer and handlers
def _live() -> Optional[LiveMode]:
    from .addon import current_session   # the session lives as long as the add-on
    session = current_session()
    return session.live if session is not None else None


def timer() -> Optional[float]:
    """The Live timer (bpy.app.timers); ends itself when Live is off."""
    live = _live()
    return live.tick() if live is not None else None


@bpy.app.handlers.persistent
def depsgraph_updated(scene: Any, depsgraph: Any = None) -> None:
    live = _live()
    if live is not None and depsgraph is not None:
        live.note_updates(depsgraph)


@bpy.app.handlers.persistent
def file_loading(*_: Any) -> None:
    """Another file replaces the scene Live watches: Live goes off."""
    live = _live()
    if live is not None:
        live.stop()


def _handlers() -> tuple[tuple[list, Any], ...]:
    return ((bpy.app.handlers.depsgraph_update_post, depsgraph_updated),
            (bpy.app.handlers.load_pre, file_loading))


def _view_area() -> Optional[bpy.types.Area]:
    """The largest 3D Viewport of the open windows (None in background mode)."""
    areas = [area for window in bpy.context.window_manager.windows
             for area in window.screen.areas if area.type == "VIEW_3D"]
    return max(areas, key=lambda a: a.width * a.height) if areas else None
