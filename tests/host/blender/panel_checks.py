"""The Atelier panels as Blender registers them, in background Blender (3.4 binary, bpy
wheels): run by tests/test_blender_panel.py as

    blender -b --factory-startup --python-exit-code 1 --python panel_checks.py -- --zip Z
    python panel_checks.py -- --zip Z          (a bpy wheel)

Background Blender draws no UI, so this checks what Blender holds: the panel classes and
their sub-panels, the labels and tooltips of every setting, the Model dropdown as Blender
reads it, and whether the progress bar widget exists. tests/host/blender/panel_window.py
draws them with a window.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy  # noqa: E402

import harness  # noqa: E402


def main() -> None:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", required=True)
    args = parser.parse_args(argv)
    module = harness.install_and_enable(args.zip, "ws://127.0.0.1:9/")   # never contacted
    name = module.__name__
    view = sys.modules[f"{name}.panel_view"]
    panels = sys.modules[f"{name}.panels"]
    session = harness.session(module)

    # Sub-panels under "Atelier" in both editors, in order, titled as panel_view says.
    for prefix, space in (("VIEW3D", "VIEW_3D"), ("IMAGE", "IMAGE_EDITOR")):
        parent = getattr(bpy.types, f"{prefix}_PT_atelier")
        assert parent.bl_label == "Atelier" and parent.bl_category == "Atelier"
        for suffix, title, closed in view.SUBPANELS:
            cls = getattr(bpy.types, f"{prefix}_PT_atelier_{suffix}")
            assert cls.bl_space_type == space and cls.bl_parent_id == parent.__name__
            assert cls.bl_label == title, (cls.bl_label, title)
            assert ("DEFAULT_CLOSED" in cls.bl_options) == closed, cls

    # Every setting a panel shows exists; every setting, preference and history field has a
    # tooltip; the labels fit.
    props = bpy.context.scene.atelier
    for fields in view.FIELDS.values():
        for prop, label in fields:
            assert prop in props.bl_rna.properties, prop
            assert len(label) <= view.LABEL_ROOM, label
    prefs = harness.preferences(module)
    for owner in (props, prefs, props.history.add()):
        for prop in owner.bl_rna.properties:
            if prop.identifier in ("rna_type", "name", "bl_idname"):
                continue
            assert prop.description.strip(), f"{owner.bl_rna.identifier}.{prop.identifier}"
    props.history.clear()
    cache = props.bl_rna.properties["cache_interval"]
    assert cache.name == "Faster Sampling", cache.name
    assert "quality" in cache.description and "faster" in cache.description

    # The Model dropdown, as Blender reads it: the loaded model, then the daemon's models
    # that make images (not its depth conditioners); picking one sets the model's name.
    item_name = bpy.types.UILayout.enum_item_name
    assert props.model_choice == view.MODEL_CURRENT
    assert item_name(props, "model_choice", view.MODEL_CURRENT) == "Loaded model"
    session.models = ["sd15-base", "dreamshaper-8", "depth-adapter"]
    session.conditioners = [("depth-adapter", "t2i_adapter")]
    session.models_listed = True
    assert item_name(props, "model_choice", "dreamshaper-8") == "dreamshaper-8"
    assert item_name(props, "model_choice", "depth-adapter") == ""
    props.model_choice = "dreamshaper-8"
    assert props.model == "dreamshaper-8" and props.model_choice == "dreamshaper-8"
    props.model = "/models/mine.safetensors"   # typed as a path: shown, not lost
    assert item_name(props, "model_choice", props.model) == \
        "/models/mine.safetensors (not listed by the daemon)"
    props.model_choice = view.MODEL_CURRENT
    assert props.model == ""

    # Progress: a real bar from Blender 4.0 on, characters before.
    assert view.has_progress_widget(bpy.types.UILayout) == (bpy.app.version >= (4, 0, 0))

    # Show in Image Editor names what is missing; without a window it says it cannot.
    for image_name in ("no such image", bpy.data.images.new("shown", 8, 8).name):
        try:
            bpy.ops.atelier.show_image(image=image_name)
        except RuntimeError as exc:
            assert "no image" in str(exc) or "cannot open" in str(exc), exc
        else:
            raise AssertionError("show_image worked without a window")
    print("PANEL CHECKS PASSED on Blender", bpy.app.version_string)


if __name__ == "__main__":
    main()
