"""Atelier for Blender: textures from a local Atelier diffusion daemon.

Blender reads ``bl_info`` from this file without running it; ``register`` and
``unregister`` import the Blender-side modules on demand, so the plain-Python
modules (``pixels``, ``settings``, ``projection``, ``build``) import without Blender.
"""

bl_info = {
    "name": "Atelier",
    "author": "Atelier contributors",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "3D Viewport / Image Editor > Sidebar > Atelier",
    "description": "Generate, render-to-image and project textures with a local Atelier daemon",
    "category": "Material",
}


def register() -> None:
    from . import addon
    addon.register()


def unregister() -> None:
    from . import addon
    addon.unregister()
