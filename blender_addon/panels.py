"""Sidebar panels in the 3D Viewport and the Image Editor (same contents in both)."""

from __future__ import annotations

import bpy

from .addon import current_session
from .runtime import JobState

CATEGORY = "Atelier"
RECENT_JOBS = 3


def _draw_settings(layout: bpy.types.UILayout, props: bpy.types.PropertyGroup) -> None:
    col = layout.column(align=True)
    col.prop(props, "prompt", text="")
    col.prop(props, "negative_prompt", text="", icon="REMOVE")
    layout.prop(props, "model")
    row = layout.row(align=True)
    row.prop(props, "width")
    row.prop(props, "height")
    row = layout.row(align=True)
    row.prop(props, "steps")
    row.prop(props, "guidance")
    layout.prop(props, "cache_interval")   # speed against quality; its tooltip says how
    row = layout.row(align=True)
    sub = row.row(align=True)
    sub.enabled = not props.random_seed
    sub.prop(props, "seed")
    row.prop(props, "random_seed", toggle=True, icon="FILE_REFRESH")
    layout.prop(props, "scheduler")
    layout.prop(props, "strength", slider=True)
    layout.row().prop(props, "tiling", expand=True)
    layout.prop(props, "batch_size")


def _draw_actions(layout: bpy.types.UILayout, props: bpy.types.PropertyGroup,
                  image_editor: bool) -> None:
    col = layout.column(align=True)
    col.operator("atelier.generate", icon="TEXTURE")
    col.prop(props, "apply_to_object")
    if image_editor:   # the image shown there, onto the active object
        col.operator("atelier.apply_image", icon="MATERIAL")
    col = layout.column(align=True)
    row = col.row(align=True)
    row.label(text="From:")
    row.prop(props, "capture_source", expand=True)
    row = col.row(align=True)
    row.operator("atelier.render_to_image", icon="RENDER_STILL")   # "From" as the panel says
    row.prop(props, "use_depth", text="", icon="MOD_DISPLACE")
    row = col.row(align=True)
    row.operator("atelier.project_texture", icon="MOD_UVPROJECT")
    row.prop(props, "bake_projection", text="", icon="RENDER_RESULT")
    col.prop(props, "control_scale", slider=True)
    row = col.row(align=True)
    row.prop(props, "depth_model")   # its tooltip says what an adapter and a ControlNet cost
    row.operator("atelier.test_connection", text="", icon="FILE_REFRESH")


def _draw_jobs(layout: bpy.types.UILayout) -> None:
    session = current_session()
    if session is None:
        return
    active = session.active_jobs
    box = layout.box()
    for job in active:
        box.label(text=job.progress_text, icon="SORTTIME")
    if active:
        box.operator("atelier.cancel", icon="CANCEL")
    for job in [j for j in session.jobs if j.state.finished][-RECENT_JOBS:]:
        icon = {JobState.DONE: "CHECKMARK", JobState.CANCELLED: "X"}.get(job.state, "ERROR")
        box.label(text=job.progress_text, icon=icon)
    if not session.jobs:
        box.label(text=session.connection_text,
                  icon="LINKED" if session.connection_ok else "UNLINKED")


class ATELIER_UL_history(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname,
                  index=0, flt_flag=0):
        layout.label(text=f"{item.prompt or '(no prompt)'}  ·  seed {item.seed}",
                     icon="IMAGE_DATA")


class _AtelierPanel:
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "Atelier"

    def draw(self, context: bpy.types.Context) -> None:
        props = context.scene.atelier
        _draw_settings(self.layout, props)
        _draw_actions(self.layout, props, self.bl_space_type == "IMAGE_EDITOR")
        _draw_jobs(self.layout)


class _AtelierHistoryPanel:
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "History"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        props = context.scene.atelier
        self.layout.template_list("ATELIER_UL_history", "", props, "history", props,
                                  "history_index", rows=4)
        self.layout.operator("atelier.recall", icon="RECOVER_LAST")


class VIEW3D_PT_atelier(_AtelierPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"


class IMAGE_PT_atelier(_AtelierPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"


class VIEW3D_PT_atelier_history(_AtelierHistoryPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_parent_id = "VIEW3D_PT_atelier"


class IMAGE_PT_atelier_history(_AtelierHistoryPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_parent_id = "IMAGE_PT_atelier"


CLASSES = (ATELIER_UL_history, VIEW3D_PT_atelier, IMAGE_PT_atelier, VIEW3D_PT_atelier_history,
           IMAGE_PT_atelier_history)
