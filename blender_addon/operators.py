"""Operators: what the panel's buttons do. Each gathers inputs on the main thread,
sends one job and returns at once; results arrive through the session's pump."""

# Keep: without it the bpy 4.2 module (seen with 4.2.23) segfaults at interpreter exit.
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Optional

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import host, passes, settings
from .addon import current_session, ensure_timer
from .live_rules import LIVE_IMAGE
from .properties import ADDON_ID
from .protocol import GenerateRequest, ProtocolError
from .protocol.client import ClientError
from .runtime import Job, JobState, Session

WATCH_INTERVAL = 0.25  # seconds between checks of a job a button started
SOURCE_ITEMS = (("CAMERA", "Camera", "The scene's active camera"),
                ("VIEW", "View", "The 3D Viewport's current view (through a temporary camera)"))


def _source_property() -> Any:
    return EnumProperty(name="From", items=SOURCE_ITEMS, default="CAMERA",
                        options={"SKIP_SAVE"},
                        description="Where to see the scene from; when not given, the "
                                    "panel's 'From' setting")


def _seen_from(operator: bpy.types.Operator, context: bpy.types.Context, width: int,
               height: int) -> contextlib.AbstractContextManager:
    """For the block, the scene camera is what the operator's ``source`` names (the
    panel's setting when the caller gave none): the scene's own camera, or a temporary
    one matching the invoking 3D Viewport's view."""
    source = (operator.source if operator.properties.is_property_set("source")
              else context.scene.atelier.capture_source)
    view = host.viewport_camera(context, width, height) if source == "VIEW" else None
    return host.temporary_camera(context.scene, context.view_layer, view)


def _session(context: bpy.types.Context) -> Session:
    session = current_session()
    if session is None:
        raise ClientError("the Atelier add-on is not registered")
    prefs = context.preferences.addons[ADDON_ID].preferences
    # Blender 4.2+ lets users forbid network access; a daemon on this machine is not "online".
    if not settings.is_loopback(prefs.host) and not getattr(bpy.app, "online_access", True):
        raise ClientError(f"Blender's online access is off (Preferences > System > Network), "
                          f"so Atelier will not connect to {prefs.host}; use a daemon on this "
                          "machine (127.0.0.1) or allow online access")
    session.connect(prefs.host, prefs.port, prefs.token)
    return session


def _record_history(scene_name: str, images: list[Any]) -> None:
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        return
    history = scene.atelier.history
    for image in images:
        record = image[settings.RECORD_KEY]
        item = history.add()
        for key in settings.HISTORY_FIELDS:
            setattr(item, key, record[key])
        item.depth = all(key in record for key in settings.DEPTH_FIELDS)
        if item.depth:
            for key in settings.DEPTH_FIELDS:
                setattr(item, key, record[key])
        item.image_name = image.name
    scene.atelier.history_index = len(history) - 1


class _SendsJobs:
    """Shared by the operators that start a generation."""

    def send(self, context: bpy.types.Context, label: str, request: GenerateRequest,
             uploads: list, then: Optional[Callable[[Job, list[Any]], None]] = None,
             note: str = "", name_for: Optional[Callable[[Optional[str]], str]] = None,
             as_files: Optional[bool] = None) -> set[str]:
        """Submit the job; ``note``: something the artist should know about it, reported now
        (as a warning) and again in the job's line when it is done. ``name_for``: the result
        images' names by label (Job.name_for); ``as_files``: True keeps the results as PNGs
        beside the .blend whatever the preferences say (None: as they say)."""
        try:
            session = _session(context)
        except ClientError as exc:
            return self.report_failure(exc)
        session.retry_now()
        scene_name = context.scene.name

        def finish(job: Job, images: list[Any]) -> None:
            _record_history(scene_name, images)
            if then is not None:
                then(job, images)

        prefs = context.preferences.addons[ADDON_ID].preferences
        if as_files is None:
            as_files = prefs.image_storage == "FILES"
        session.submit(Job(label, request, tuple(uploads), scene_name, finish,
                           images_as_files=as_files, note=note, name_for=name_for))
        ensure_timer()
        self.report({"WARNING"} if note else {"INFO"},
                    f"{label}: sent to the Atelier daemon" + (f"; {note}" if note else ""))
        return {"FINISHED"}

    def report_failure(self, exc: Exception) -> set[str]:
        self.report({"ERROR"}, str(exc))
        return {"CANCELLED"}

    def size_refused(self, panel: settings.PanelSettings) -> bool:
        """Report and True if the daemon would refuse the panel's size (checked before
        anything is rendered; limits known once connected, else only multiples of 8)."""
        session = current_session()
        problem = settings.size_problem(panel.width, panel.height,
                                        session.limits if session is not None else None)
        if problem is not None:
            self.report({"ERROR"}, problem)
        return problem is not None

    # From a button (a window exists): stay modal, without blocking anything, until the
    # job ends, so the daemon's answer becomes this operator's report in the status bar.
    def invoke(self, context: bpy.types.Context, event: Any) -> set[str]:
        result = self.execute(context)
        session = current_session()
        if result != {"FINISHED"} or context.window is None or session is None:
            return result
        self._job = session.jobs[-1]
        self._timer = context.window_manager.event_timer_add(WATCH_INTERVAL,
                                                             window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: Any) -> set[str]:
        job = self._job
        if event.type != "TIMER" or not job.state.finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        if job.state == JobState.FAILED:
            self.report({"ERROR"}, job.message)
            return {"CANCELLED"}
        self.report({"WARNING"} if job.state == JobState.CANCELLED else {"INFO"},
                    job.progress_text)
        return {"FINISHED"}


class ATELIER_OT_generate(bpy.types.Operator, _SendsJobs):
    """Generate a texture from the prompt into a new image"""
    bl_idname = "atelier.generate"
    bl_label = "Generate Texture"

    apply_to_object: BoolProperty(name="Apply to Active Object", default=False,
                                  options={"SKIP_SAVE"})
    replace_material: BoolProperty(
        name="Replace Material", default=False, options={"SKIP_SAVE"},
        description="Replace the active material instead of adding a new material slot")

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = context.scene.atelier
        target = None
        if self.apply_to_object or props.apply_to_object:
            obj = context.active_object
            if obj is None or obj.type != "MESH":
                self.report({"ERROR"}, "select a mesh object to apply the texture to")
                return {"CANCELLED"}
            target = obj.name
        panel = settings.settings_from(props)
        if self.size_refused(panel):
            return {"CANCELLED"}
        try:
            reference = passes.reference_upload(props)
            request = settings.build_request(panel, reference=reference.id if reference
                                             else None)
            replace = self.replace_material

            def apply(job: Job, images: list[Any]) -> None:
                obj = bpy.data.objects.get(target) if target else None
                if obj is not None and images:
                    material = host.new_image_material(images[0].name, images[0])
                    host.assign_material(obj, material, replace=replace)

            return self.send(context, "Generate", request, [reference] if reference else [],
                             apply if target else None)
        except (ProtocolError, ClientError, host.HostError) as exc:
            return self.report_failure(exc)


class ATELIER_OT_render_to_image(bpy.types.Operator, _SendsJobs):
    """Render the scene from the active camera or the 3D Viewport's view and use it as the
    init image (img2img)"""
    bl_idname = "atelier.render_to_image"
    bl_label = "Render to Image"

    source: _source_property()

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = context.scene.atelier
        panel = settings.settings_from(props)
        if self.size_refused(panel):
            return {"CANCELLED"}
        try:
            reference = passes.reference_upload(props)
            with _seen_from(self, context, panel.width, panel.height):
                shot = passes.render_passes(context.scene, context.view_layer, panel.width,
                                            panel.height, settings.passes_to_send(panel),
                                            color=True)
            request, uploads = passes.camera_job(shot, panel, reference=reference)
            return self.send(context, "Render to Image", request, uploads)
        except (ProtocolError, ClientError, host.HostError) as exc:
            return self.report_failure(exc)


class ATELIER_OT_project_texture(bpy.types.Operator, _SendsJobs):
    """Generate from the depth of the selected objects seen from the active camera or the
    3D Viewport's view, and project the result onto their faces that see it"""
    bl_idname = "atelier.project_texture"
    bl_label = "Project Texture"

    bake: BoolProperty(name="Bake to UVs", default=False, options={"SKIP_SAVE"},
                       description="Also bake the projection into each object's own UV "
                                   "layout as a new image")
    source: _source_property()

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        targets = [o for o in context.selected_objects if o.type == "MESH"]
        if not targets:
            self.report({"ERROR"}, "select the mesh objects to project onto")
            return {"CANCELLED"}
        panel = settings.settings_from(scene.atelier)
        if self.size_refused(panel):
            return {"CANCELLED"}
        try:
            reference = passes.reference_upload(scene.atelier)
            width, height = panel.width, panel.height
            with _seen_from(self, context, width, height):
                depsgraph = context.evaluated_depsgraph_get()
                view, proj = host.camera_matrices(scene, depsgraph, width, height)
                # Visibility as the scene is now, matching the depth rendered below.
                faces = {o.name: host.visible_faces(scene, depsgraph, o, view, proj,
                                                    (width, height)) for o in targets}
                unseen = [name for name, mask in faces.items() if not mask.any()]
                if len(unseen) == len(faces):
                    self.report({"ERROR"}, settings.unseen_report(unseen, all_of_them=True))
                    return {"CANCELLED"}
                # Everything the viewport shows can hide the targets: all of it is in the
                # passes (depth always, the others as the Controls ask).
                shot = passes.render_passes(scene, context.view_layer, width, height,
                                            settings.passes_to_send(panel, depth=True),
                                            as_viewport=True)
            request, uploads = passes.camera_job(shot, panel, reference=reference)
        except (ProtocolError, ClientError, host.HostError) as exc:
            return self.report_failure(exc)

        bake = self.bake or scene.atelier.bake_projection
        seen = {name: mask for name, mask in faces.items() if name not in unseen}

        def project(job: Job, images: list[Any]) -> None:
            _project(job, images[0], seen, view, proj, bake)

        return self.send(context, "Project Texture", request, uploads, project,
                         note=settings.unseen_report(unseen) if unseen else "")


def _project(job: Job, image: Any, faces: dict[str, np.ndarray], view: list, proj: list,
             bake: bool) -> None:
    for name, mask in faces.items():
        obj = bpy.data.objects.get(name)
        if obj is None:
            continue
        if len(obj.data.polygons) != len(mask):
            raise host.HostError(f"'{name}' changed while the texture was generated; "
                                 "project again")
        uv_name = host.add_projection_uvs(obj, view, proj)
        material = host.new_image_material(image.name, image, uv_map=uv_name)
        host.assign_material(obj, material, replace=False, faces=mask)
        if bake:
            baked = host.bake_projection(obj, image, uv_name, mask, f"{image.name} {name}")
            record = image[settings.RECORD_KEY].to_dict()
            baked[settings.RECORD_KEY] = {**record, "baked_for": name}
            job.image_names.append(baked.name)


class ATELIER_OT_cancel(bpy.types.Operator):
    """Stop the running Atelier jobs; nothing they made so far is kept"""
    bl_idname = "atelier.cancel"
    bl_label = "Cancel"

    def execute(self, context: bpy.types.Context) -> set[str]:
        session = current_session()
        if session is None or not session.active_jobs:
            self.report({"INFO"}, "no Atelier job is running")
            return {"CANCELLED"}
        session.cancel_all()
        return {"FINISHED"}


class ATELIER_OT_test_connection(bpy.types.Operator):
    """Connect to the Atelier daemon, show its device, model and queue, list its depth models"""
    bl_idname = "atelier.test_connection"
    bl_label = "Test Connection"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            session = _session(context)
            session.retry_now()
            session.request_status()
        except ClientError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        ensure_timer()
        self.report({"INFO"}, session.connection_text)
        return {"FINISHED"}


class ATELIER_OT_recall(bpy.types.Operator):
    """Put the settings of a history entry back in the panel"""
    bl_idname = "atelier.recall"
    bl_label = "Recall Settings"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=-1, options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = context.scene.atelier
        index = self.index if self.index >= 0 else props.history_index
        if not 0 <= index < len(props.history):
            self.report({"ERROR"}, "no history entry selected")
            return {"CANCELLED"}
        item = props.history[index]
        record = {key: getattr(item, key) for key in settings.HISTORY_FIELDS
                  + (settings.DEPTH_FIELDS if item.depth else ())}
        recalled = settings.settings_from_record(record, settings.settings_from(props))
        for key, value in dataclasses.asdict(recalled).items():
            if key == "loras":
                _set_lora_rows(props.loras, value)
            else:
                setattr(props, key, value)
        return {"FINISHED"}


def _set_lora_rows(rows: Any, loras: Any) -> None:
    """Make the panel's LoRA rows ``loras`` ((name, weight) pairs), in order."""
    rows.clear()
    for name, weight in loras:
        row = rows.add()
        row.lora_name = name
        row.weight = weight


class ATELIER_OT_lora_add(bpy.types.Operator):
    """Add a LoRA row (at most 8): choose the LoRA in its dropdown"""
    bl_idname = "atelier.lora_add"
    bl_label = "Add LoRA"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        rows = context.scene.atelier.loras
        if len(rows) >= settings.LORAS_MAX:
            self.report({"ERROR"}, f"a job takes at most {settings.LORAS_MAX} LoRAs: remove "
                                   "one first")
            return {"CANCELLED"}
        rows.add()
        return {"FINISHED"}


class ATELIER_OT_lora_remove(bpy.types.Operator):
    """Remove this LoRA row"""
    bl_idname = "atelier.lora_remove"
    bl_label = "Remove LoRA"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=-1, options={"SKIP_SAVE"},
                       description="The row to remove; -1: the last one")

    def execute(self, context: bpy.types.Context) -> set[str]:
        rows = context.scene.atelier.loras
        index = self.index if self.index >= 0 else len(rows) - 1
        if not 0 <= index < len(rows):
            self.report({"ERROR"}, "no such LoRA row")
            return {"CANCELLED"}
        rows.remove(index)
        return {"FINISHED"}


class ATELIER_OT_apply_image(bpy.types.Operator):
    """Put an image on the active object's material (a new material slot unless replacing)"""
    bl_idname = "atelier.apply_image"
    bl_label = "Apply Image to Active Object"
    bl_options = {"REGISTER", "UNDO"}

    image: StringProperty(name="Image", options={"SKIP_SAVE"})
    replace_material: BoolProperty(name="Replace Material", default=False,
                                   options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        name = self.image
        space = context.space_data
        if not name and space is not None and space.type == "IMAGE_EDITOR" and space.image:
            name = space.image.name
        image = bpy.data.images.get(name)
        obj = context.active_object
        if image is None or obj is None or obj.type != "MESH":
            self.report({"ERROR"}, "needs an image and an active mesh object")
            return {"CANCELLED"}
        material = host.new_image_material(image.name, image)
        host.assign_material(obj, material, replace=self.replace_material)
        return {"FINISHED"}


class ATELIER_OT_live(bpy.types.Operator):
    """Live: after each move of the camera or edit of the scene, render it small and let the
    daemon repaint it (img2img at Live Strength) into the image "Atelier Live"; only the
    newest result is shown"""
    bl_idname = "atelier.live"
    bl_label = "Live"

    action: EnumProperty(name="Action", default="TOGGLE", options={"SKIP_SAVE"},
                         items=(("TOGGLE", "Toggle", "Turn Live on if it is off, else off"),
                                ("ON", "On", "Turn Live on"), ("OFF", "Off", "Turn Live off")))

    def execute(self, context: bpy.types.Context) -> set[str]:
        session = current_session()
        if session is None:
            self.report({"ERROR"}, "the Atelier add-on is not registered")
            return {"CANCELLED"}
        on = not session.live.on if self.action == "TOGGLE" else self.action == "ON"
        if not on:
            session.live.stop()
            self.report({"INFO"}, "Atelier Live is off")
            return {"FINISHED"}
        if context.scene.camera is None and context.scene.atelier.capture_source == "CAMERA":
            self.report({"ERROR"}, "Live sees through the scene's camera ('From: Camera'), "
                                   "and the scene has none: add one or choose 'From: View'")
            return {"CANCELLED"}
        try:
            session = _session(context)
        except ClientError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        session.retry_now()
        session.live.start(context.scene)
        ensure_timer()
        self.report({"INFO"}, "Atelier Live is on: move the camera or edit the scene")
        return {"FINISHED"}


class ATELIER_OT_live_apply(bpy.types.Operator):
    """Keep the live result shown: copy "Atelier Live" into a new image named after its
    prompt and seed, saved with the .blend and listed in the History"""
    bl_idname = "atelier.live_apply"
    bl_label = "Apply Live"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        live = bpy.data.images.get(LIVE_IMAGE)
        if live is None or settings.RECORD_KEY not in live:
            self.report({"ERROR"}, "there is no live result to apply yet: turn Live on and "
                                   "wait for one")
            return {"CANCELLED"}
        record = live[settings.RECORD_KEY].to_dict()
        width, height = live.size
        image = host.new_image(settings.image_name(record["prompt"], record["seed"]),
                               width, height)
        host.write_rgba8(image, host.read_rgba8(live), width, height)
        image[settings.RECORD_KEY] = record
        prefs = context.preferences.addons[ADDON_ID].preferences
        note = host.keep_images([image], prefs.image_storage == "FILES")
        _record_history(context.scene.name, [image])
        self.report({"WARNING"} if note else {"INFO"},
                    f"Live result kept as '{image.name}'" + (f"; {note}" if note else ""))
        return {"FINISHED"}


CLASSES = (ATELIER_OT_generate, ATELIER_OT_render_to_image, ATELIER_OT_project_texture,
           ATELIER_OT_cancel, ATELIER_OT_test_connection, ATELIER_OT_recall,
           ATELIER_OT_apply_image, ATELIER_OT_lora_add, ATELIER_OT_lora_remove,
           ATELIER_OT_live, ATELIER_OT_live_apply)
