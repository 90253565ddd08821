"""The game-asset operators: Upscale an image, Make Material from a colour texture.

Both take an image datablock (the ``image`` property; else the Image Editor's image;
else the selected History entry's), send it to the daemon and return at once; what comes
back is new datablocks only: the source image is never changed, and a cancelled job
leaves nothing (the session removes its images, and the material is made only once every
map is in)."""

from __future__ import annotations

from typing import Any, Optional

import bpy
from bpy.props import StringProperty

from . import assets, host, pbr_material, settings
from .addon import current_session
from .operators import _SendsJobs
from .protocol import PixelFormat, ProtocolError
from .protocol.client import ClientError, make_upload
from .runtime import Job


def source_image(name: str, context: bpy.types.Context) -> Optional[bpy.types.Image]:
    """The image an asset operator works on: ``name`` (its ``image`` property), else the
    invoking Image Editor's image, else the History's selected entry's image."""
    if name:
        return bpy.data.images.get(name)
    space = context.space_data
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        return space.image
    props = context.scene.atelier
    if 0 <= props.history_index < len(props.history):
        return bpy.data.images.get(props.history[props.history_index].image_name)
    return None


def _capability_refused(operator: bpy.types.Operator, *needed: str) -> bool:
    """Report and True if the connected daemon lacks one of ``needed``."""
    session = current_session()
    for name in needed:
        problem = assets.capability_problem(name, session.capabilities if session else (),
                                            bool(session and session.connection_ok))
        if problem is not None:
            operator.report({"ERROR"}, problem)
            return True
    return False


def _upload(image: bpy.types.Image) -> Any:
    width, height = image.size
    if width == 0 or height == 0:
        raise host.HostError(f"image '{image.name}' has no pixels (is its file missing?)")
    return make_upload(PixelFormat.RGBA8, width, height, host.read_rgba8(image))


def _record(image: bpy.types.Image) -> Optional[dict]:
    record = image.get(settings.RECORD_KEY)
    return record.to_dict() if hasattr(record, "to_dict") else None


_IMAGE_PROPERTY = dict(name="Image", options={"SKIP_SAVE"},
                       description="Name of the image; empty = the Image Editor's image, else "
                                   "the History's selected one")


class ATELIER_OT_upscale(bpy.types.Operator, _SendsJobs):
    """Make the image larger (2x, 4x or a target size) into a new image; Lanczos or one of
    the daemon's upscalers, optionally refined with the prompt; the source stays as it is"""
    bl_idname = "atelier.upscale"
    bl_label = "Upscale"

    image: StringProperty(**_IMAGE_PROPERTY)

    def execute(self, context: bpy.types.Context) -> set[str]:
        image = source_image(self.image, context)
        if image is None:
            self.report({"ERROR"}, "no image to upscale: show one in the Image Editor or "
                                   "select a History entry")
            return {"CANCELLED"}
        props = context.scene.atelier
        choice = assets.UpscaleChoice(
            factor=int(props.upscale_factor) if props.upscale_mode == "FACTOR" else None,
            width=props.upscale_width, height=props.upscale_height,
            upscaler=props.upscaler or None, refine_strength=props.refine_strength)
        needed = ("upscale", "refine") if choice.refine_strength > 0 else ("upscale",)
        if _capability_refused(self, *needed):
            return {"CANCELLED"}
        source = (int(image.size[0]), int(image.size[1]))
        session = current_session()
        problem = assets.upscale_problem(source, choice,
                                         session.limits if session is not None else None)
        if problem is not None:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        try:
            init = _upload(image)
            tiling = assets.source_tiling(_record(image), props.tiling)
            request = assets.upscale_request(settings.settings_from(props), choice, init.id,
                                             source, tiling)
        except (ProtocolError, ClientError, host.HostError) as exc:
            return self.report_failure(exc)
        name = assets.upscaled_name(image.name, choice, (request.width, request.height))
        return self.send(context, f"Upscale '{image.name}'", request, [init],
                         name_for=lambda label: name)


class ATELIER_OT_make_material(bpy.types.Operator, _SendsJobs):
    """Make a PBR material from a colour texture: the daemon makes the maps ticked under
    Maps (normal, roughness, height); a new material (Principled BSDF, Normal Map, height as
    Bump) goes into a new material slot of the active object. The maps are saved beside the
    .blend (packed while it was never saved)"""
    bl_idname = "atelier.make_material"
    bl_label = "Make Material"

    image: StringProperty(**_IMAGE_PROPERTY)

    def execute(self, context: bpy.types.Context) -> set[str]:
        image = source_image(self.image, context)
        if image is None:
            self.report({"ERROR"}, "no colour texture: show one in the Image Editor or "
                                   "select a History entry")
            return {"CANCELLED"}
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            self.report({"ERROR"}, "select the mesh object that gets the material")
            return {"CANCELLED"}
        if _capability_refused(self, "texture_set"):
            return {"CANCELLED"}
        props = context.scene.atelier
        try:
            wanted = assets.chosen_maps(props.material_maps)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        try:
            init = _upload(image)
            tiling = assets.source_tiling(_record(image), props.tiling)
            request = assets.texture_request(init.id, tiling, props.normal_strength, wanted)
        except (ProtocolError, ClientError, host.HostError) as exc:
            return self.report_failure(exc)
        color_name, target = image.name, obj.name

        def build(job: Job, images: list[Any]) -> None:
            color = bpy.data.images.get(color_name)
            obj = bpy.data.objects.get(target)
            if color is None or obj is None:
                raise host.HostError(f"'{color_name}' or '{target}' went away while the maps "
                                     "were made; the maps are kept")
            labels = [img[settings.RECORD_KEY].get("label") for img in images]
            try:
                found = assets.maps_by_label(labels, [img.name for img in images], wanted)
            except ProtocolError as exc:
                raise host.HostError(exc.message) from exc
            maps = {label: bpy.data.images[name] for label, name in found.items()}
            material = pbr_material.build(assets.material_name(color_name), color, maps)
            host.assign_material(obj, material, replace=False)

        return self.send(context, f"Make Material from '{image.name}'", request, [init],
                         build, name_for=lambda label: assets.map_name(color_name,
                                                                       label or "map"),
                         as_files=True)


CLASSES = (ATELIER_OT_upscale, ATELIER_OT_make_material)
