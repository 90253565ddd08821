"""Blender properties: add-on preferences, the panel's settings, and the history list."""

from __future__ import annotations

from typing import Optional

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty,
                       IntProperty, PointerProperty, StringProperty)

from .protocol.client import DEFAULT_PORT
from .settings import (CACHE_INTERVAL_HELP, CACHE_INTERVAL_MAX, DEPTH_MODEL_HELP,
                       IMAGE_STORAGE_ITEMS, MAX_BATCH, SEED_MAX, DepthModelMenu)
from .protocol.messages import SCHEDULERS

ADDON_ID = __package__   # "atelier_blender", or "bl_ext.<repo>.atelier_blender" as an extension

SCHEDULER_ITEMS = [(name, name, f"{name} scheduler") for name in SCHEDULERS]
TILING_ITEMS = [
    ("none", "Off", "Ordinary, non-repeating image"),
    ("x", "X", "Wraps left to right"),
    ("y", "Y", "Wraps top to bottom"),
    ("both", "Both", "Tiles in both directions"),
]

# The Depth Model dropdown: the daemon's depth ControlNets and T2I-Adapters, as last listed.
# One menu for the add-on's lifetime: it holds the item list Blender draws from (Blender
# keeps only pointers to those strings) and gives each name a fixed item number.
DEPTH_MODEL_MENU = DepthModelMenu()


def depth_model_items(props: "AtelierSettings", context: Optional[bpy.types.Context]) -> list:
    from .addon import current_session   # the session lives as long as the add-on
    session = current_session()
    if session is None:
        return DEPTH_MODEL_MENU.build([], props.control_model, listed_now=False)
    return DEPTH_MODEL_MENU.build(session.conditioners, props.control_model,
                                  listed_now=session.models_listed)


def _get_depth_model(props: "AtelierSettings") -> int:
    return DEPTH_MODEL_MENU.number(props.control_model)


def _set_depth_model(props: "AtelierSettings", number: int) -> None:
    name = DEPTH_MODEL_MENU.name(number)
    if name is not None:
        props.control_model = name


class AtelierPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    host: StringProperty(name="Host", default="127.0.0.1",
                         description="Address of the machine running 'atelier serve'")
    port: IntProperty(name="Port", default=DEFAULT_PORT, min=1, max=65535)
    token: StringProperty(name="Token", subtype="PASSWORD", default="",
                          description="Access token, if the daemon was started with one")
    image_storage: EnumProperty(name="Keep Results", items=IMAGE_STORAGE_ITEMS, default="PACK")

    def draw(self, context: bpy.types.Context) -> None:
        from .addon import current_session  # the session lives as long as the add-on
        layout = self.layout
        row = layout.row()
        row.prop(self, "host")
        row.prop(self, "port")
        layout.prop(self, "token")
        layout.prop(self, "image_storage")
        layout.operator("atelier.test_connection", icon="LINKED")
        session = current_session()
        if session is not None:
            icon = "CHECKMARK" if session.connection_ok else "INFO"
            for line in _wrap(session.connection_text):
                layout.label(text=line, icon=icon)
                icon = "BLANK1"
            if session.models:
                for line in _wrap("Models on the daemon: " + ", ".join(session.models)):
                    layout.label(text=line, icon="BLANK1")


def _wrap(text: str, width: int = 90) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


class AtelierHistoryItem(bpy.types.PropertyGroup):
    """One finished result, enough to regenerate it."""
    prompt: StringProperty()
    negative_prompt: StringProperty()
    model: StringProperty()
    kind: StringProperty()
    width: IntProperty()
    height: IntProperty()
    steps: IntProperty()
    guidance: FloatProperty()
    seed: IntProperty(min=0)
    scheduler: StringProperty()
    strength: FloatProperty()
    tiling: StringProperty()
    cache_interval: IntProperty(default=1, min=1, max=CACHE_INTERVAL_MAX)
    depth: BoolProperty()             # made with depth conditioning: control_model applies
    control_model: StringProperty()   # "" = the daemon's default depth model
    image_name: StringProperty()


class AtelierSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", default="")
    negative_prompt: StringProperty(name="Negative", default="")
    model: StringProperty(name="Model", default="",
                          description="Model name or path on the daemon; empty = the loaded one")
    width: IntProperty(name="Width", default=512, min=64, max=4096, step=64)
    height: IntProperty(name="Height", default=512, min=64, max=4096, step=64)
    steps: IntProperty(name="Steps", default=20, min=1, max=150)
    cache_interval: IntProperty(name="Step Cache", default=1, min=1, max=CACHE_INTERVAL_MAX,
                                description=CACHE_INTERVAL_HELP)
    guidance: FloatProperty(name="Guidance", default=7.0, min=0.0, max=50.0)
    seed: IntProperty(name="Seed", default=0, min=0, max=SEED_MAX)
    random_seed: BoolProperty(name="Random", default=True,
                              description="A new seed each time")
    scheduler: EnumProperty(name="Scheduler", items=SCHEDULER_ITEMS, default="euler_a")
    strength: FloatProperty(name="Strength", default=0.75, min=0.0, max=1.0,
                            description="How much img2img may change the render")
    tiling: EnumProperty(name="Seamless", items=TILING_ITEMS, default="none")
    batch_size: IntProperty(name="Batch", default=1, min=1, max=MAX_BATCH)
    preview_every: IntProperty(name="Preview Every", default=1, min=0, max=50,
                               description="Show a preview every N steps (0 = none)")
    control_scale: FloatProperty(name="Depth Strength", default=1.0, min=0.0, max=2.0)
    # The chosen depth model's name ("" = Daemon default): kept as a string, so a name the
    # daemon no longer lists survives; the dropdown below shows and sets it.
    control_model: StringProperty(name="Depth Model Name", default="",
                                  description="Name of the depth ControlNet or T2I-Adapter "
                                              "on the daemon; empty = the daemon's default")
    depth_model: EnumProperty(name="Depth Model", description=DEPTH_MODEL_HELP,
                              items=depth_model_items, get=_get_depth_model,
                              set=_set_depth_model, options=set())
    use_depth: BoolProperty(name="Use Depth", default=False,
                            description="Condition Render to Image on the scene's depth")
    apply_to_object: BoolProperty(name="Apply to Active Object", default=False,
                                  description="Put the generated texture on the active "
                                              "object's material (in a new material slot)")
    bake_projection: BoolProperty(name="Bake to UVs", default=False,
                                  description="Project Texture also bakes the projection into "
                                              "each object's own UV layout as a new image")
    capture_source: EnumProperty(
        name="From", default="CAMERA",
        items=(("CAMERA", "Camera", "Render to Image and Project Texture see through the "
                                    "scene's active camera"),
               ("VIEW", "View", "Render to Image and Project Texture see what the 3D "
                                "Viewport shows")))
    history: CollectionProperty(type=AtelierHistoryItem)
    history_index: IntProperty(default=0)


CLASSES = (AtelierPreferences, AtelierHistoryItem, AtelierSettings)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.atelier = PointerProperty(type=AtelierSettings)


def unregister() -> None:
    del bpy.types.Scene.atelier
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
