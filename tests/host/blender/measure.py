"""What the add-on costs on Blender's main thread, measured inside real Blender.

    blender -b --factory-startup --python tests/host/blender/measure.py -- \
        --zip Z --url U --scenario measure
    python tests/host/blender/measure.py -- --zip Z --url U --scenario measure   (bpy wheel)

Prints one line per operation: the median of several runs, in milliseconds.
Not a test: figures for the README/report. The daemon is not needed.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

import harness  # noqa: E402

RUNS = 5


def median_ms(fn, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    args = harness.parse_args()
    module = harness.install_and_enable(args.zip, args.url)
    host, capture = module.host, module.capture
    rng = np.random.default_rng(0)
    print(f"Blender {bpy.app.version_string}")
    for side in (512, 1024, 2048):
        frame = rng.integers(0, 256, side * side * 4, dtype=np.uint8).tobytes()
        image = host.new_image("measure", side, side)
        write = median_ms(lambda: host.write_rgba8(image, frame, side, side))
        read = median_ms(lambda: host.read_rgba8(image))
        print(f"write RGBA8 frame into image {side}x{side}: {write:.1f} ms; "
              f"read image as RGBA8: {read:.1f} ms")
        bpy.data.images.remove(image)
    # What a 1k -> 4k Upscale's result costs to land (written, kept), and what packing it
    # costs when the .blend is saved
    side = 4096
    frame = rng.integers(0, 256, side * side * 4, dtype=np.uint8).tobytes()
    image = host.new_image("measure 4k", side, side)
    write = median_ms(lambda: host.write_rgba8(image, frame, side, side), runs=2)
    start = time.perf_counter()
    host.keep_images([image], as_files=False)
    keep = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    host.pack_waiting_images()
    print(f"upscale result {side}x{side}: write {write:.0f} ms, keep {keep:.1f} ms; "
          f"packed (PNG) at the save {(time.perf_counter() - start) * 1000:.0f} ms")
    bpy.data.images.remove(image)
    del frame
    maps = {label: host.new_image(label, 64, 64, module.assets.MAP_COLORSPACE[label])
            for label in module.assets.MATERIAL_MAPS}
    color = host.new_image("color", 64, 64)
    build = median_ms(lambda: module.pbr_material.build("m", color, maps))
    print(f"Make Material's node tree: {build:.1f} ms")

    scene = harness.empty_scene()
    harness.add_camera(scene, (0.0, -10.0, 0.0))
    grid = harness.add_grid(scene, "Grid", (0, 0, 0), size=6, cuts=100)   # 10,000 faces
    harness.add_cube(scene, "Cube", (0, -3, 0))
    for side in (512, 1024):
        depth = median_ms(lambda: capture.render_camera(
            scene, bpy.context.view_layer, side, side, color=False, depth=True), runs=3)
        print(f"depth render {side}x{side} (Cycles, 1 sample): {depth:.0f} ms")
    for kinds in (("depth", "normal"), ("depth", "normal", "lineart")):   # Controls rows
        passes = median_ms(lambda: module.passes.render_passes(
            scene, bpy.context.view_layer, 512, 512, kinds), runs=3)
        print(f"{' + '.join(kinds)} passes 512x512 (Cycles, 1 sample): {passes:.0f} ms")
    depsgraph = bpy.context.evaluated_depsgraph_get()
    view, proj = host.camera_matrices(scene, depsgraph, 512, 512)
    faces = len(grid.data.polygons)
    vis = median_ms(lambda: host.visible_faces(scene, depsgraph, grid, view, proj, (512, 512)),
                    runs=3)
    print(f"visible faces, {faces} faces (centres, corners, grids on big faces): {vis:.0f} ms")
    mask = host.visible_faces(scene, depsgraph, grid, view, proj, (512, 512))
    uv = median_ms(lambda: grid.data.uv_layers.remove(
        grid.data.uv_layers[host.add_projection_uvs(grid, view, proj)]), runs=3)
    print(f"projection UV map, {faces} faces: {uv:.0f} ms")
    image = host.new_image("src", 512, 512)
    host.write_rgba8(image, rng.integers(0, 256, 512 * 512 * 4, dtype=np.uint8).tobytes(),
                     512, 512)
    uv_name = host.add_projection_uvs(grid, view, proj)
    bake = median_ms(lambda: host.bake_projection(grid, image, uv_name, mask, "baked"), runs=3)
    print(f"bake into own UVs, {int(mask.sum())} faces, 512x512: {bake:.0f} ms")
    print("SCENARIO measure PASSED")


main()
