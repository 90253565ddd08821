"""Make Material's node tree: a Principled BSDF wired with a texture set's maps.

    Texture Coordinate (UV) -> Mapping -> every Image Texture (shared tiling)
    Colour texture (sRGB)       -> Base Color
    Roughness map (Non-Color)   -> Roughness
    Normal map (Non-Color)      -> Normal Map (tangent space) -> Bump.Normal
    Height map (Non-Color)      -> Bump.Height -> Principled BSDF Normal

Height is a Bump node rather than displacement: bump shades the same in EEVEE and Cycles
on any mesh, where true displacement needs Cycles, a dense or adaptively subdivided mesh
and the material's displacement setting. The node names below are stable (scripts and
tests find nodes by them); their labels say what each holds. The sockets used (Base
Color, Roughness, Normal on the BSDF; Color/Normal on Normal Map; Height/Normal on Bump)
kept their names through Blender 4.0's Principled BSDF rewrite, unlike e.g. 'Specular'
('Specular IOR Level' since 4.0), which this material leaves alone.
"""

from __future__ import annotations

from typing import Mapping

import bpy

from .assets import MAP_COLORSPACE

# Node names (stable) and the labels shown on them.
NODES = {
    "coords": ("Atelier UV", "Texture Coordinate"),
    "mapping": ("Atelier Mapping", "Tiling (Mapping)"),
    "color": ("Atelier Color", "Base Color (sRGB)"),
    "roughness": ("Atelier Roughness", "Roughness (Non-Color)"),
    "normal": ("Atelier Normal", "Normal Map (Non-Color)"),
    "height": ("Atelier Height", "Height (Non-Color)"),
    "metallic": ("Atelier Metallic", "Metallic (Non-Color)"),
    "normal_map": ("Atelier Normal Map", "Normal Map (Tangent)"),
    "bump": ("Atelier Bump", "Height as Bump"),
}
BUMP_DISTANCE = 0.02   # metres the full height range bumps by, for a texture of about 1 m


def _node(tree: bpy.types.NodeTree, kind: str, key: str, x: float, y: float) -> bpy.types.Node:
    node = tree.nodes.new(kind)
    node.name, node.label = NODES[key]
    node.location = (x, y)
    return node


def _texture(tree: bpy.types.NodeTree, key: str, image: bpy.types.Image, label: str,
             x: float, y: float, vector: bpy.types.NodeSocket) -> bpy.types.Node:
    if image.colorspace_settings.name != MAP_COLORSPACE[label]:
        # Made with its colour space by the session (host.new_image): setting it now would
        # make Blender regenerate a generated image's pixels
        raise ValueError(f"'{image.name}' holds {label} data but is in "
                         f"{image.colorspace_settings.name}, not {MAP_COLORSPACE[label]}")
    node = _node(tree, "ShaderNodeTexImage", key, x, y)
    node.image = image
    tree.links.new(vector, node.inputs["Vector"])
    return node


def build(name: str, color: bpy.types.Image,
          maps: Mapping[str, bpy.types.Image]) -> bpy.types.Material:
    """A new material ``name`` from the colour texture and the ``maps`` by label
    (any of normal, roughness, height and metallic: each one given is wired, the BSDF's
    own value stays for the others), each already in its colour space
    (assets.MAP_COLORSPACE)."""
    material = bpy.data.materials.new(name)
    if material.node_tree is None:   # before 5.0 a new material has no nodes until asked
        material.use_nodes = True
    tree = material.node_tree
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    bx, by = bsdf.location.x, bsdf.location.y
    coords = _node(tree, "ShaderNodeTexCoord", "coords", bx - 1300, by - 200)
    mapping = _node(tree, "ShaderNodeMapping", "mapping", bx - 1100, by - 200)
    tree.links.new(coords.outputs["UV"], mapping.inputs["Vector"])
    uv = mapping.outputs["Vector"]

    base = _node(tree, "ShaderNodeTexImage", "color", bx - 800, by)
    base.image = color   # the artist's image: its colour space is left as it is
    tree.links.new(uv, base.inputs["Vector"])
    tree.links.new(base.outputs["Color"], bsdf.inputs["Base Color"])

    if "roughness" in maps:
        rough = _texture(tree, "roughness", maps["roughness"], "roughness", bx - 800,
                         by - 300, uv)
        tree.links.new(rough.outputs["Color"], bsdf.inputs["Roughness"])

    surface_normal = None   # what feeds the BSDF's Normal: the normal map, bumped by height
    if "normal" in maps:
        normal = _texture(tree, "normal", maps["normal"], "normal", bx - 800, by - 600, uv)
        normal_map = _node(tree, "ShaderNodeNormalMap", "normal_map", bx - 500, by - 600)
        normal_map.space = "TANGENT"
        tree.links.new(normal.outputs["Color"], normal_map.inputs["Color"])
        surface_normal = normal_map.outputs["Normal"]
    if "height" in maps:
        height = _texture(tree, "height", maps["height"], "height", bx - 800, by - 900, uv)
        bump = _node(tree, "ShaderNodeBump", "bump", bx - 250, by - 750)
        bump.inputs["Distance"].default_value = BUMP_DISTANCE
        tree.links.new(height.outputs["Color"], bump.inputs["Height"])
        if surface_normal is not None:
            tree.links.new(surface_normal, bump.inputs["Normal"])
        surface_normal = bump.outputs["Normal"]
    if surface_normal is not None:
        tree.links.new(surface_normal, bsdf.inputs["Normal"])

    if "metallic" in maps:
        metal = _texture(tree, "metallic", maps["metallic"], "metallic", bx - 800, by + 300, uv)
        tree.links.new(metal.outputs["Color"], bsdf.inputs["Metallic"])
    return material
