"""Sidebar panels in the 3D Viewport and the Image Editor (same contents in both).

"Atelier" shows the connection, the running jobs' progress and a preview of the newest
image; its sub-panels hold the settings (Prompt, Size & Sampling, Texture & Projection,
Advanced) and the History. What to show is decided in ``panel_view`` (no Blender needed);
this module only draws it.
"""

from __future__ import annotations

import time
from typing import Optional

import bpy
from bpy.props import StringProperty

from . import assets, panel_view, settings
from .addon import current_session
from .asset_ops import source_image
from .live_rules import LIVE_IMAGE
from .panel_view import FIELDS, SUBPANELS
from .runtime import JobState

CATEGORY = "Atelier"
RECENT_JOBS = 3
BOXED_LINE_ROOM = panel_view.LINE_ROOM - 3   # a line with an icon inside a box
ICON_LINE_ROOM = panel_view.LINE_ROOM - 4    # a line with an icon, for text with long words
PREVIEW_SCALE = 7.0     # the panel's preview, in icon sizes (about 140 px at scale 1)
HISTORY_ROWS = 4

_ETA = panel_view.EtaClock()


def _labels(panel: str) -> dict[str, str]:
    return dict(FIELDS[panel])


def _split(layout: bpy.types.UILayout) -> bpy.types.UILayout:
    """A column of labelled fields: labels left, fields right (Blender's own style)."""
    col = layout.column()
    col.use_property_split = True
    col.use_property_decorate = False
    return col


# ---------------------------------------------------------------- the main panel
def _draw_connection(layout: bpy.types.UILayout) -> None:
    session = current_session()
    connected = session is not None and session.connection_ok
    view = panel_view.connection_view(connected,
                                      session.connection_text if session else "not connected")
    col = layout.column(align=True)
    lines = panel_view.wrap(view.text)
    icon = view.icon
    for line in lines:
        col.label(text=line, icon=icon)
        icon = "BLANK1"
    col.operator("atelier.test_connection", text=view.button,
                 icon="LINKED" if connected else "PLUGIN")


def _job_key(job) -> str:
    return job.job_id or job.ref or str(id(job))


def _draw_progress(layout: bpy.types.UILayout, job) -> None:
    running = job.state == JobState.RUNNING
    eta = _ETA.observe(_job_key(job), job.step, job.total, time.monotonic()) if running else None
    view = panel_view.progress_view(job.label, job.message or job.state.value, running,
                                    job.step, job.total, eta)
    col = layout.column(align=True)
    for line in panel_view.wrap(view.detail):
        col.label(text=line)
    if panel_view.has_progress_widget(col):   # Blender 4.0+
        col.progress(factor=view.factor, type="BAR", text=view.text)
    else:                                       # 3.x: a bar of characters
        col.label(text=panel_view.text_bar(view.factor))
        if view.left:
            col.label(text=view.left)


def _draw_jobs(layout: bpy.types.UILayout) -> None:
    session = current_session()
    if session is None or not session.jobs:
        return
    active = session.active_jobs
    box = layout.box()
    for job in active:
        _draw_progress(box, job)
    if active:
        box.operator("atelier.cancel", icon="CANCEL")
    for job in [j for j in session.jobs if j.state.finished][-RECENT_JOBS:]:
        icon = {JobState.DONE: "CHECKMARK", JobState.CANCELLED: "X"}.get(job.state, "ERROR")
        col = box.column(align=True)
        for line in panel_view.wrap(job.progress_text):
            col.label(text=line, icon=icon)
            icon = "BLANK1"


def _preview_image(props) -> Optional[bpy.types.Image]:
    session = current_session()
    jobs = [(j.state in (JobState.FAILED, JobState.CANCELLED), list(j.image_names))
            for j in (session.jobs if session is not None else [])]
    history = [item.image_name for item in props.history]
    name = panel_view.preview_name(jobs, history, lambda n: n in bpy.data.images)
    return bpy.data.images[name] if name is not None else None


def _draw_preview(layout: bpy.types.UILayout, props) -> None:
    image = _preview_image(props)
    if image is None:
        return
    col = layout.column(align=True)
    col.template_icon(icon_value=layout.icon(image), scale=PREVIEW_SCALE)
    op = col.operator("atelier.show_image", icon="IMAGE_DATA")
    op.image = image.name


def _draw_live(layout: bpy.types.UILayout, props) -> None:
    """The Live toggle, its strength, Apply, and what Live is doing."""
    session = current_session()
    live = session.live if session is not None else None
    on = live is not None and live.on
    box = layout.box()
    row = box.row(align=True)
    row.operator("atelier.live", text="Live", icon="PAUSE" if on else "PLAY", depress=on)
    apply = row.row(align=True)
    apply.enabled = LIVE_IMAGE in bpy.data.images
    apply.operator("atelier.live_apply", text="Apply", icon="IMAGE_DATA")
    box.prop(props, "live_strength", text="Live Strength", slider=True)
    if live is not None and (on or live.problem):
        col = box.column(align=True)
        icon = "ERROR" if live.problem else "INFO"
        for line in panel_view.wrap(live.line(), BOXED_LINE_ROOM):
            col.label(text=line, icon=icon)
            icon = "BLANK1"


def draw_main(layout: bpy.types.UILayout, props, image_editor: bool) -> None:
    """The "Atelier" panel itself: connection, Live, progress, preview."""
    _draw_connection(layout)
    _draw_live(layout, props)
    _draw_jobs(layout)
    _draw_preview(layout, props)


# ---------------------------------------------------------------- sub-panels
def draw_prompt(layout: bpy.types.UILayout, props, image_editor: bool) -> None:
    labels = _labels("prompt")
    col = layout.column(align=True)
    col.label(text=labels["prompt"])
    col.prop(props, "prompt", text="")
    col = layout.column(align=True)
    col.label(text=labels["negative_prompt"])
    col.prop(props, "negative_prompt", text="")
    _split(layout).prop(props, "model_choice", text=labels["model_choice"])


def draw_size(layout: bpy.types.UILayout, props, image_editor: bool) -> None:
    labels = _labels("size")
    col = _split(layout)
    sizes = col.column(align=True)
    sizes.prop(props, "width", text=labels["width"])
    sizes.prop(props, "height", text=labels["height"])
    session = current_session()
    limits = session.limits if session is not None else None
    warnings = panel_view.size_warnings(props.width, props.height,
                                        limits.max_side if limits else None,
                                        limits.max_pixels if limits else None)
    if warnings:
        box = layout.box()
        box.alert = True
        for warning in warnings:
            icon = "ERROR"
            for line in panel_view.wrap(warning):
                box.label(text=line, icon=icon)
                icon = "BLANK1"
        col = _split(layout)
    col.separator()
    col.prop(props, "sampler_preset_choice", text=labels["sampler_preset_choice"])
    note = panel_view.preset_note(props.sampler_preset,
                                  settings.preset_summary(props.sampler_preset))
    if note:
        icon = "INFO"
        for line in panel_view.wrap(note):
            col.label(text=line, icon=icon)
            icon = "BLANK1"
    sampling = col.column()
    sampling.active = not props.sampler_preset   # greyed: the preset decides these
    sampling.prop(props, "steps", text=labels["steps"])
    sampling.prop(props, "guidance", text=labels["guidance"])
    sampling.prop(props, "scheduler", text=labels["scheduler"])
    col.prop(props, "random_seed", text=labels["random_seed"] + " Seed")
    sub = col.column()
    sub.enabled = not props.random_seed
    sub.prop(props, "seed", text=labels["seed"])
    col.prop(props, "batch_size", text=labels["batch_size"])


def draw_texture(layout: bpy.types.UILayout, props, image_editor: bool) -> None:
    labels = _labels("texture")
    col = layout.column(align=True)
    col.scale_y = 1.4
    col.operator("atelier.generate", icon="TEXTURE")
    _split(layout).prop(props, "tiling", text=labels["tiling"])
    layout.prop(props, "apply_to_object")
    if image_editor:   # the image shown there, onto the active object
        layout.operator("atelier.apply_image", icon="MATERIAL")

    layout.separator()
    row = layout.row(align=True)
    row.label(text=labels["capture_source"] + ":")
    row.prop(props, "capture_source", expand=True)
    col = layout.column(align=True)
    col.scale_y = 1.2
    col.operator("atelier.render_to_image", icon="RENDER_STILL")   # "From" as the panel says
    _split(layout).prop(props, "strength", text=labels["strength"], slider=True)

    layout.separator()
    col = layout.column(align=True)
    col.scale_y = 1.2
    col.operator("atelier.project_texture", icon="MOD_UVPROJECT")
    layout.prop(props, "bake_projection", text="Bake to Object UVs")


def draw_controls(layout: bpy.types.UILayout, props, image_editor: bool) -> None:
    """One box per render pass that can steer Render to Image and Project Texture (its
    checkbox, weight, start and end, model), then the reference image."""
    labels = _labels("controls")
    _lines(layout, panel_view.CONTROLS_NOTE, "INFO")
    for kind, (use, scale, start, end, model) in panel_view.CONTROL_ROWS:
        box = layout.box()
        box.prop(props, use, text=labels[use])
        body = box.column(align=True)
        body.active = getattr(props, use) or kind == "depth"   # Project Texture: depth
        body.prop(props, scale, text=labels[scale], slider=True)
        body.prop(props, start, text=labels[start], slider=True)   # a half row cuts "Start"
        body.prop(props, end, text=labels[end], slider=True)
        body.prop(props, model, text="")

    box = layout.box()
    box.prop(props, "use_reference", text="Reference Image")
    body = box.column(align=True)
    body.active = props.use_reference
    body.prop(props, "reference_image", text="")
    body.prop(props, "reference_weight", text=labels["reference_weight"], slider=True)
    body.row(align=True).prop(props, "reference_flavour", expand=True)


def _lines(layout: bpy.types.UILayout, text: str, icon: str) -> None:
    """``text`` wrapped to the sidebar, ``icon`` before its first line."""
    col = layout.column(align=True)
    for line in panel_view.wrap(text, ICON_LINE_ROOM):
        col.label(text=line, icon=icon)
        icon = "BLANK1"


def draw_assets(layout: bpy.types.UILayout, props, image_editor: bool) -> None:
    """Upscale and Make Material, on the Image Editor's image or the History's selected."""
    labels = _labels("assets")
    image = source_image("", bpy.context)
    if image is None:
        _lines(layout, "Show an image in the Image Editor or select a History entry", "INFO")
    else:
        _lines(layout, f"Image: {image.name} ({image.size[0]} x {image.size[1]})",
               "IMAGE_DATA")
    row = layout.row(align=True)
    row.prop(props, "upscale_mode", expand=True)
    col = _split(layout)
    if props.upscale_mode == "FACTOR":
        col.row(align=True).prop(props, "upscale_factor", expand=True)
    else:
        sizes = col.column(align=True)
        sizes.prop(props, "upscale_width", text=labels["upscale_width"])
        sizes.prop(props, "upscale_height", text=labels["upscale_height"])
    col.prop(props, "upscaler_choice", text=labels["upscaler_choice"])
    col.prop(props, "refine_strength", text=labels["refine_strength"], slider=True)
    if image is not None:
        choice = assets.UpscaleChoice(
            factor=int(props.upscale_factor) if props.upscale_mode == "FACTOR" else None,
            width=props.upscale_width, height=props.upscale_height)
        session = current_session()
        problem = assets.upscale_problem(tuple(image.size), choice,
                                         session.limits if session is not None else None)
        width, height = assets.upscaled_size(*image.size, choice)
        _lines(layout, problem or f"Makes {width} x {height}", "ERROR" if problem else "INFO")
    col = layout.column(align=True)
    col.scale_y = 1.2
    col.enabled = image is not None
    col.operator("atelier.upscale", icon="FULLSCREEN_ENTER")

    layout.separator()
    col = layout.column(align=True)
    col.scale_y = 1.2
    col.enabled = image is not None
    col.operator("atelier.make_material", icon="NODE_MATERIAL")
    layout.row(align=True).prop(props, "material_maps")
    layout.prop(props, "normal_strength", text=labels["normal_strength"])
    saved = bool(bpy.data.filepath)
    _lines(layout, assets.storage_note(saved), "FILE_FOLDER" if saved else "PACKAGE")


def draw_advanced(layout: bpy.types.UILayout, props, image_editor: bool) -> None:
    labels = _labels("advanced")
    col = layout.column(align=True)
    col.label(text="Faster sampling (reuse steps)")
    col.prop(props, "cache_interval", text=labels["cache_interval"])
    hint = panel_view.cache_hint(props.cache_interval)
    col.label(text=hint, icon="CHECKMARK" if props.cache_interval <= 1 else "INFO")
    col = _split(layout)
    col.prop(props, "preview_every", text=labels["preview_every"])
    col.prop(props, "model", text=labels["model"])

    layout.separator()
    col = layout.column(align=True)
    col.label(text=labels["loras"] + ":")
    for index, row in enumerate(props.loras):
        line = col.row(align=True)
        line.prop(row, "lora_choice", text="")
        line.prop(row, "weight", text="")
        line.operator("atelier.lora_remove", text="", icon="X").index = index
    add = col.row()
    add.enabled = len(props.loras) < settings.LORAS_MAX
    add.operator("atelier.lora_add", icon="ADD")
    chosen = sum(1 for row in props.loras if row.lora_name.strip())
    for line in panel_view.wrap(panel_view.loras_note(len(props.loras), chosen,
                                                      settings.LORAS_MAX)):
        col.label(text=line)


class ATELIER_UL_history(bpy.types.UIList):
    """Results of this scene, each with a thumbnail of its image."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname,
                  index=0, flt_flag=0):
        text = panel_view.history_text(item.prompt, item.seed)
        image = bpy.data.images.get(item.image_name) if item.image_name else None
        if image is not None:
            layout.label(text=text, icon_value=layout.icon(image))
        else:
            layout.label(text=text, icon="IMAGE_DATA")


def draw_history(layout: bpy.types.UILayout, props, image_editor: bool) -> None:
    layout.template_list("ATELIER_UL_history", "", props, "history", props, "history_index",
                         rows=HISTORY_ROWS)
    row = layout.row(align=True)
    row.operator("atelier.recall", text="Recall", icon="RECOVER_LAST")
    if 0 <= props.history_index < len(props.history):
        name = props.history[props.history_index].image_name
        if name in bpy.data.images:
            row.operator("atelier.show_image", text="Show", icon="IMAGE_DATA").image = name


# What each panel draws, by SUBPANELS' ids ("main": the Atelier panel itself).
DRAW = {"main": draw_main, "prompt": draw_prompt, "size": draw_size, "texture": draw_texture,
        "controls": draw_controls, "assets": draw_assets, "advanced": draw_advanced,
        "history": draw_history}


class ATELIER_OT_show_image(bpy.types.Operator):
    """Show this image in an Image Editor (a new window holds one if none is open)"""
    bl_idname = "atelier.show_image"
    bl_label = "Show in Image Editor"

    image: StringProperty(name="Image", options={"SKIP_SAVE"},
                          description="Name of the image to show")

    def execute(self, context: bpy.types.Context) -> set[str]:
        image = bpy.data.images.get(self.image)
        if image is None:
            self.report({"ERROR"}, f"there is no image '{self.image}'")
            return {"CANCELLED"}
        editors = [area for window in context.window_manager.windows
                   for area in window.screen.areas if area.type == "IMAGE_EDITOR"]
        if not editors:
            try:
                bpy.ops.wm.window_new()
            except RuntimeError as exc:   # no window (background mode)
                self.report({"ERROR"}, f"cannot open an Image Editor here: {exc}")
                return {"CANCELLED"}
            area = context.window_manager.windows[-1].screen.areas[0]
            area.type = "IMAGE_EDITOR"
            editors = [area]
        for area in editors:
            area.spaces.active.image = image
        return {"FINISHED"}


# ---------------------------------------------------------------- classes
def _panel_class(space: str, suffix: Optional[str], title: str, closed: bool) -> type:
    prefix = {"VIEW_3D": "VIEW3D", "IMAGE_EDITOR": "IMAGE"}[space]
    parent = f"{prefix}_PT_atelier"
    attributes = {"bl_space_type": space, "bl_region_type": "UI", "bl_category": CATEGORY,
                  "bl_label": title, "__module__": __name__}
    image_editor = space == "IMAGE_EDITOR"
    key = suffix or "main"

    def draw(self, context: bpy.types.Context) -> None:
        DRAW[key](self.layout, context.scene.atelier, image_editor)

    attributes["draw"] = draw
    if suffix is None:
        return type(parent, (bpy.types.Panel,), attributes)
    attributes.update(bl_parent_id=parent, bl_options={"DEFAULT_CLOSED"} if closed else set())
    return type(f"{parent}_{suffix}", (bpy.types.Panel,), attributes)


def _panels() -> tuple[type, ...]:
    classes = []
    for space in ("VIEW_3D", "IMAGE_EDITOR"):
        classes.append(_panel_class(space, None, "Atelier", False))
        classes.extend(_panel_class(space, suffix, title, closed)
                       for suffix, title, closed in SUBPANELS)
    return tuple(classes)


PANELS = _panels()
CLASSES = (ATELIER_UL_history, ATELIER_OT_show_image) + PANELS
