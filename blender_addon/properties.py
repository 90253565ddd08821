"""Blender properties: add-on preferences, the panel's settings, and the history list."""

from __future__ import annotations

from typing import Optional

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty,
                       IntProperty, PointerProperty, StringProperty)

from .assets import REFINE_HELP, UPSCALER_HELP, UpscalerMenu
from .live_rules import LIVE_STRENGTH, LIVE_STRENGTH_HELP
from .protocol.client import DEFAULT_PORT
from .panel_view import ModelMenu, wrap
from .settings import (CACHE_INTERVAL_MAX, CONTROL_FIELDS, CONTROL_TITLES, DEPTH_MODEL_HELP,
                       IMAGE_STORAGE_ITEMS, LORA_HELP, LORA_WEIGHT_HELP, MAX_BATCH,
                       PASS_CONTROLS, REFERENCE_FLAVOURS, REFERENCE_WEIGHT_DEFAULT,
                       SAMPLER_PRESET_HELP, SEED_MAX, ControlModelMenu, LoraMenu,
                       SamplerPresetMenu)
from .protocol.messages import LORA_WEIGHT_MAX, REFERENCE_WEIGHT_MAX, SCHEDULERS

PREFERENCES_LINE = 90     # characters of a line in the add-on's preferences

ADDON_ID = __package__   # "atelier_blender", or "bl_ext.<repo>.atelier_blender" as an extension

SCHEDULER_ITEMS = [(name, name, f"{name} scheduler") for name in SCHEDULERS]
TILING_ITEMS = [
    ("none", "Off", "Ordinary, non-repeating image"),
    ("x", "X", "Wraps left to right"),
    ("y", "Y", "Wraps top to bottom"),
    ("both", "Both", "Tiles in both directions"),
]

# The model dropdowns of the Controls rows (Depth Model, and Normal's and Line Art's): the
# daemon's ControlNets and T2I-Adapters for that kind, as last listed. One menu per kind for
# the add-on's lifetime: it holds the item list Blender draws from (Blender keeps only
# pointers to those strings) and gives each name a fixed item number.
CONTROL_MODEL_MENUS = {kind: ControlModelMenu(kind) for kind in PASS_CONTROLS}
DEPTH_MODEL_MENU = CONTROL_MODEL_MENUS["depth"]


def control_model_items(kind: str, props: "AtelierSettings") -> list:
    """The items of ``kind``'s model dropdown: the daemon's models for that kind, as last
    listed, and the chosen name (CONTROL_FIELDS) if they lack it."""
    from .addon import current_session   # the session lives as long as the add-on
    menu = CONTROL_MODEL_MENUS[kind]
    chosen = getattr(props, CONTROL_FIELDS[kind][4])
    session = current_session()
    if session is None:
        return menu.build([], chosen, listed_now=False)
    return menu.build(session.conditioners_of(kind), chosen, listed_now=session.models_listed)


def depth_model_items(props: "AtelierSettings", context: Optional[bpy.types.Context]) -> list:
    return control_model_items("depth", props)


def _control_model_choice(kind: str, description: str) -> EnumProperty:
    """The dropdown that shows and sets the string property holding ``kind``'s model name
    (CONTROL_FIELDS), listing the daemon's models for that kind."""
    menu = CONTROL_MODEL_MENUS[kind]
    name_property = CONTROL_FIELDS[kind][4]

    def items(props: "AtelierSettings", context: Optional[bpy.types.Context]) -> list:
        return control_model_items(kind, props)

    def get(props: "AtelierSettings") -> int:
        return menu.number(getattr(props, name_property))

    def set_(props: "AtelierSettings", number: int) -> None:
        name = menu.name(number)
        if name is not None:
            setattr(props, name_property, name)

    return EnumProperty(name=f"{CONTROL_TITLES[kind]} Model", description=description,
                        items=items, get=get, set=set_, options=set())


def _control_start(kind: str) -> FloatProperty:
    """Where ``kind``'s control starts to steer, as a share of the steps."""
    title = CONTROL_TITLES[kind]
    return FloatProperty(name=f"{title} Start", default=0.0, min=0.0, max=1.0,
                         subtype="FACTOR",
                         description=f"Where in the sampling the {title.lower()} starts to "
                                     "steer: 0 = from the first step")


def _control_end(kind: str) -> FloatProperty:
    """Where ``kind``'s control stops steering, as a share of the steps."""
    title = CONTROL_TITLES[kind]
    return FloatProperty(name=f"{title} End", default=1.0, min=0.0, max=1.0,
                         subtype="FACTOR",
                         description=f"Where the {title.lower()} stops steering: 1 = to the "
                                     "last step; lower leaves the last steps free for detail")


# The LoRA rows' dropdown: the daemon's LoRAs for the model's family (same pattern). Every
# row gets the same list (all rows' chosen names in it), so drawing rows never swaps lists.
LORA_MENU = LoraMenu()


def lora_items(row: "AtelierLoraItem", context: Optional[bpy.types.Context]) -> list:
    from .addon import current_session   # the session lives as long as the add-on
    props = getattr(row.id_data, "atelier", None)   # the scene holding the row
    chosen = [r.lora_name for r in props.loras] if props is not None else [row.lora_name]
    session = current_session()
    if session is None:
        return LORA_MENU.build([], None, chosen, listed_now=False)
    family = session.model_family(props.model if props is not None else "")
    return LORA_MENU.build(session.loras, family, chosen, listed_now=session.models_listed)


def _get_lora(row: "AtelierLoraItem") -> int:
    return LORA_MENU.number(row.lora_name)


def _set_lora(row: "AtelierLoraItem", number: int) -> None:
    name = LORA_MENU.name(number)
    if name is not None:
        row.lora_name = name


# The Sampler Preset dropdown: None and the presets of the daemon's welcome.
SAMPLER_PRESET_MENU = SamplerPresetMenu()


def sampler_preset_items(props: "AtelierSettings",
                         context: Optional[bpy.types.Context]) -> list:
    from .addon import current_session   # the session lives as long as the add-on
    session = current_session()
    if session is None:
        return SAMPLER_PRESET_MENU.build([], props.sampler_preset, listed_now=False)
    return SAMPLER_PRESET_MENU.build(session.sampler_presets, props.sampler_preset,
                                     listed_now=session.connection_ok
                                     or bool(session.sampler_presets))


def _get_sampler_preset(props: "AtelierSettings") -> int:
    return SAMPLER_PRESET_MENU.number(props.sampler_preset)


def _set_sampler_preset(props: "AtelierSettings", number: int) -> None:
    name = SAMPLER_PRESET_MENU.name(number)
    if name is not None:
        props.sampler_preset = name


# The Upscaler dropdown: Lanczos and the daemon's upscaler models (same pattern).
UPSCALER_MENU = UpscalerMenu()


def upscaler_items(props: "AtelierSettings", context: Optional[bpy.types.Context]) -> list:
    from .addon import current_session   # the session lives as long as the add-on
    session = current_session()
    if session is None:
        return UPSCALER_MENU.build([], props.upscaler, listed_now=False)
    return UPSCALER_MENU.build(session.upscalers, props.upscaler,
                               listed_now=session.models_listed)


def _get_upscaler(props: "AtelierSettings") -> int:
    return UPSCALER_MENU.number(props.upscaler)


def _set_upscaler(props: "AtelierSettings", number: int) -> None:
    name = UPSCALER_MENU.name(number)
    if name is not None:
        props.upscaler = name


class AtelierPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    host: StringProperty(name="Host", default="127.0.0.1",
                         description="Address of the machine running 'atelier serve'")
    port: IntProperty(name="Port", default=DEFAULT_PORT, min=1, max=65535,
                      description="Port 'atelier serve' listens on")
    token: StringProperty(name="Token", subtype="PASSWORD", default="",
                          description="Access token, if the daemon was started with one")
    image_storage: EnumProperty(name="Keep Results", items=IMAGE_STORAGE_ITEMS, default="PACK",
                                description="Where result images are kept so they come "
                                            "back with the .blend")

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
            for line in wrap(session.connection_text, PREFERENCES_LINE):
                layout.label(text=line, icon=icon)
                icon = "BLANK1"
            if session.models:
                for line in wrap("Models on the daemon: " + ", ".join(session.models),
                                 PREFERENCES_LINE):
                    layout.label(text=line, icon="BLANK1")



class AtelierHistoryItem(bpy.types.PropertyGroup):
    """One finished result, enough to regenerate it."""
    prompt: StringProperty(name="Prompt", description="What the image was asked to show")
    negative_prompt: StringProperty(name="Negative", description="What it was asked to avoid")
    model: StringProperty(name="Model", description="The daemon's model that made it")
    kind: StringProperty(name="Kind", description="txt2img, img2img or a depth job")
    width: IntProperty(name="Width", description="Width in pixels")
    height: IntProperty(name="Height", description="Height in pixels")
    steps: IntProperty(name="Steps", description="Sampling steps")
    guidance: FloatProperty(name="Guidance", description="How closely it followed the prompt")
    seed: IntProperty(name="Seed", min=0, description="The seed that regenerates it")
    scheduler: StringProperty(name="Scheduler", description="The sampler it used")
    strength: FloatProperty(name="Strength", description="How much img2img changed the render")
    tiling: StringProperty(name="Seamless", description="Which directions it tiles in")
    cache_interval: IntProperty(name="Faster Sampling", default=1, min=1,
                                max=CACHE_INTERVAL_MAX,
                                description="Faster sampling it used (1 = off)")
    depth: BoolProperty(name="Depth", description="Made with depth conditioning")
    control_model: StringProperty(name="Depth Model",   # "" = the daemon's default
                                  description="The depth model it used; empty = the "
                                              "daemon's default")
    loras: StringProperty(name="LoRAs", default="",
                          description="The LoRAs it used, as JSON [[name, weight], ...]; "
                                      "empty = none")
    sampler_preset: StringProperty(name="Sampler Preset", default="",
                                   description="The sampler preset it used; empty = none")
    pass_controls: StringProperty(name="Controls", default="",
                                  description="Its normal and line-art controls, as JSON "
                                              "[[kind, weight, start, end, model], ...]; "
                                              "empty = none")
    image_name: StringProperty(name="Image", description="The image it made")


class AtelierLoraItem(bpy.types.PropertyGroup):
    """One LoRA row of the panel: a LoRA on the daemon and its weight."""
    # The chosen LoRA's name ("" = none yet): a string, so a name the daemon no longer lists
    # survives; the dropdown below shows and sets it.
    lora_name: StringProperty(name="LoRA Name", default="",
                              description="Name of the LoRA on the daemon, as it lists it; "
                                          "empty = this row sends nothing")
    lora_choice: EnumProperty(name="LoRA", description=LORA_HELP, items=lora_items,
                              get=_get_lora, set=_set_lora, options=set())
    weight: FloatProperty(name="Weight", default=1.0, min=-LORA_WEIGHT_MAX,
                          max=LORA_WEIGHT_MAX, soft_min=-2.0, soft_max=2.0,
                          description=LORA_WEIGHT_HELP)


# The Model dropdown: the daemon's models, as last listed (like the Depth Model one).
MODEL_MENU = ModelMenu()


def model_items(props: "AtelierSettings", context: Optional[bpy.types.Context]) -> list:
    from .addon import current_session   # the session lives as long as the add-on
    session = current_session()
    if session is None:
        return MODEL_MENU.build([], [], props.model, listed_now=False)
    current = session.status.model if session.status is not None else ""
    conditioners = [name for kind in PASS_CONTROLS for name, _ in session.conditioners_of(kind)]
    return MODEL_MENU.build(session.models, conditioners,
                            props.model, listed_now=session.models_listed,
                            current=current or "")


def _get_model(props: "AtelierSettings") -> int:
    return MODEL_MENU.number(props.model)


def _set_model(props: "AtelierSettings", number: int) -> None:
    name = MODEL_MENU.name(number)
    if name is not None:
        props.model = name


FASTER_SAMPLING_HELP = (
    "Reuse steps: faster, at a small cost in quality. 1 = off (the whole model runs at "
    "every step, full quality). 2 reuses every other step's deep features: about 1.5x "
    "faster; 3: about 1.9x faster. Images differ a little from ones made with 1, with "
    "slightly less fine detail at higher values")


class AtelierSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", default="",
                           description="What the image should show, e.g. 'weathered red "
                                       "bricks, moss in the joints'")
    negative_prompt: StringProperty(name="Negative Prompt", default="",
                                    description="What the image should not show, e.g. "
                                                "'blurry, text, watermark'")
    model: StringProperty(name="Model Name", default="",
                          description="Model name or path on the daemon; empty = the loaded one")
    model_choice: EnumProperty(name="Model", items=model_items, get=_get_model, set=_set_model,
                               options=set(),
                               description="Which of the daemon's models makes the image. "
                                           "The list comes from the daemon when the add-on "
                                           "connects (Connect button)")
    width: IntProperty(name="Width", default=512, min=64, max=4096, step=64,
                       description="Image width in pixels; a multiple of 8")
    height: IntProperty(name="Height", default=512, min=64, max=4096, step=64,
                        description="Image height in pixels; a multiple of 8")
    steps: IntProperty(name="Steps", default=20, min=1, max=150,
                       description="Sampling steps: more is slower and usually cleaner "
                                   "(20-30 is typical)")
    cache_interval: IntProperty(name="Faster Sampling", default=1, min=1,
                                max=CACHE_INTERVAL_MAX, description=FASTER_SAMPLING_HELP)
    guidance: FloatProperty(name="Guidance", default=7.0, min=0.0, max=50.0,
                            description="How closely the image follows the prompt: higher is "
                                        "more literal, lower is freer (5-9 is typical)")
    seed: IntProperty(name="Seed", default=0, min=0, max=SEED_MAX,
                      description="The same seed and settings make the same image again")
    random_seed: BoolProperty(name="Random", default=True,
                              description="A new seed each time (off: use the Seed field)")
    scheduler: EnumProperty(name="Scheduler", items=SCHEDULER_ITEMS, default="euler_a",
                            description="The sampler: how noise becomes an image step by "
                                        "step; euler_a is a good default")
    strength: FloatProperty(name="Strength", default=0.75, min=0.0, max=1.0,
                            description="How much Render to Image may change the render: 0 "
                                        "keeps it, 1 repaints it completely")
    tiling: EnumProperty(name="Seamless", items=TILING_ITEMS, default="none",
                         description="Make the texture repeat without visible seams")
    batch_size: IntProperty(name="Images", default=1, min=1, max=MAX_BATCH,
                            description="How many images one click makes (seeds follow on)")
    preview_every: IntProperty(name="Previews", default=1, min=0, max=50,
                               description="Show a preview every N steps while it "
                                           "generates (0 = none)")
    control_scale: FloatProperty(name="Depth Weight", default=1.0, min=0.0, max=2.0,
                                 description="How strongly the scene's depth shapes the image "
                                             "(Project Texture, Render to Image with Depth)")
    # The chosen depth model's name ("" = Daemon default): kept as a string, so a name the
    # daemon no longer lists survives; the dropdown below shows and sets it.
    control_model: StringProperty(name="Depth Model Name", default="",
                                  description="Name of the depth ControlNet or T2I-Adapter "
                                              "on the daemon; empty = the daemon's default")
    depth_model: _control_model_choice("depth", DEPTH_MODEL_HELP)
    use_depth: BoolProperty(name="Use Depth", default=False,
                            description="Render to Image also sends the scene's depth, so "
                                        "the new image keeps its shapes (Project Texture "
                                        "always does)")
    depth_start: _control_start("depth")
    depth_end: _control_end("depth")
    use_normal: BoolProperty(name="Use Normals", default=False,
                             description="Render to Image and Project Texture also send the "
                                         "scene's surface directions (Blender's Normal pass, "
                                         "in the camera's space), so the new image keeps "
                                         "how surfaces turn")
    normal_scale: FloatProperty(name="Normal Weight", default=1.0, min=0.0, max=2.0,
                                description="How strongly the surface directions shape "
                                            "the image")
    normal_start: _control_start("normal")
    normal_end: _control_end("normal")
    normal_model: StringProperty(name="Normal Model Name", default="",
                                 description="Name of the normal ControlNet or T2I-Adapter "
                                             "on the daemon; empty = the daemon's default")
    normal_model_choice: _control_model_choice(
        "normal", "Which model reads the normal pass. Daemon default: ControlNet 1.1 "
                  "normalbae for SD1.5 models; for SDXL choose one")
    use_lineart: BoolProperty(name="Use Line Art", default=False,
                              description="Render to Image and Project Texture also send "
                                          "the scene's outlines and creases (a Freestyle "
                                          "line pass, light lines on black)")
    lineart_scale: FloatProperty(name="Line Art Weight", default=1.0, min=0.0, max=2.0,
                                 description="How strongly the lines shape the image")
    lineart_start: _control_start("lineart")
    lineart_end: _control_end("lineart")
    lineart_model: StringProperty(name="Line Art Model Name", default="",
                                  description="Name of the line-art ControlNet or "
                                              "T2I-Adapter on the daemon; empty = the "
                                              "daemon's default")
    lineart_model_choice: _control_model_choice(
        "lineart", "Which model reads the line pass. Daemon default: the line-art model "
                   "for the job model's family")
    use_reference: BoolProperty(name="Use Reference", default=False,
                                description="Every job also borrows from the reference "
                                            "image (IP-Adapter on the daemon)")
    reference_image: PointerProperty(type=bpy.types.Image, name="Reference Image",
                                     description="An image of this .blend whose subject or "
                                                 "style the jobs borrow")
    reference_weight: FloatProperty(name="Reference Weight", default=REFERENCE_WEIGHT_DEFAULT,
                                    min=0.0, max=REFERENCE_WEIGHT_MAX,
                                    description="How strongly the reference steers: 0 = not "
                                                "at all")
    reference_flavour: EnumProperty(name="Borrow", items=REFERENCE_FLAVOURS, default="content",
                                    description="What the jobs borrow from the reference")
    apply_to_object: BoolProperty(name="Apply to Active Object", default=False,
                                  description="Put the generated texture on the active "
                                              "object's material (in a new material slot)")
    bake_projection: BoolProperty(name="Bake to UVs", default=False,
                                  description="Project Texture also bakes the projection into "
                                              "each object's own UV layout as a new image")
    capture_source: EnumProperty(
        name="From", default="CAMERA",
        description="Where Render to Image and Project Texture see the scene from",
        items=(("CAMERA", "Camera", "Render to Image and Project Texture see through the "
                                    "scene's active camera"),
               ("VIEW", "View", "Render to Image and Project Texture see what the 3D "
                                "Viewport shows")))
    live_strength: FloatProperty(name="Live Strength", default=LIVE_STRENGTH, min=0.0,
                                 max=1.0, description=LIVE_STRENGTH_HELP)
    loras: CollectionProperty(type=AtelierLoraItem, name="LoRAs",
                              description="LoRAs applied to every job from the panel (at "
                                          "most 8), each with its weight")
    sampler_preset: StringProperty(name="Sampler Preset Name", default="",
                                   description="Name of the sampler preset on the daemon; "
                                               "empty = none (the panel's steps, guidance "
                                               "and scheduler)")
    sampler_preset_choice: EnumProperty(name="Sampler Preset", description=SAMPLER_PRESET_HELP,
                                        items=sampler_preset_items, get=_get_sampler_preset,
                                        set=_set_sampler_preset, options=set())
    upscale_mode: EnumProperty(
        name="Upscale To", default="FACTOR",
        description="Make the image larger by a factor or to a size in pixels",
        items=(("FACTOR", "Factor", "The image's size times the factor"),
               ("SIZE", "Size", "A target width and height in pixels")))
    upscale_factor: EnumProperty(
        name="Factor", default="4", description="How many times larger each side becomes",
        items=(("2", "2x", "Twice as wide and high (1k -> 2k)"),
               ("4", "4x", "Four times as wide and high (1k -> 4k)")))
    upscale_width: IntProperty(name="Target Width", default=2048, min=64, max=8192, step=64,
                               description="Width of the upscaled image in pixels; a "
                                           "multiple of 8")
    upscale_height: IntProperty(name="Target Height", default=2048, min=64, max=8192,
                                step=64, description="Height of the upscaled image in "
                                                     "pixels; a multiple of 8")
    upscaler: StringProperty(name="Upscaler Name", default="",
                             description="Name of the upscaler model on the daemon; empty = "
                                         "Lanczos (no model)")
    upscaler_choice: EnumProperty(name="Upscaler", description=UPSCALER_HELP,
                                  items=upscaler_items, get=_get_upscaler, set=_set_upscaler,
                                  options=set())
    refine_strength: FloatProperty(name="Refine", default=0.0, min=0.0, max=1.0,
                                   description=REFINE_HELP)
    material_maps: EnumProperty(
        name="Maps", options={"ENUM_FLAG"}, default={"normal", "roughness", "height"},
        items=(("normal", "Normal", "A tangent-space normal map into a Normal Map node"),
               ("roughness", "Roughness", "A roughness map into the BSDF's Roughness"),
               ("height", "Height", "A height map as a Bump node")),
        description="Which maps Make Material asks the daemon for and wires; the BSDF keeps "
                    "its own value for the others")
    normal_strength: FloatProperty(name="Normal Strength", default=8.0, min=0.0, max=100.0,
                                   description="How steep the normal map's slopes are: the "
                                               "surface rises this many pixels over the "
                                               "height map's full range")
    history: CollectionProperty(type=AtelierHistoryItem, name="History",
                                description="Images made in this scene, newest last")
    history_index: IntProperty(default=0, name="Selected",
                               description="The history entry Recall Settings uses")


CLASSES = (AtelierPreferences, AtelierHistoryItem, AtelierLoraItem, AtelierSettings)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.atelier = PointerProperty(type=AtelierSettings)


def unregister() -> None:
    del bpy.types.Scene.atelier
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
