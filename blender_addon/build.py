"""Build the installable add-on zip.

    python -m blender_addon.build --out dist/
    python blender_addon/build.py --out dist/

The zip holds one folder, ``atelier_blender/``: this add-on's modules, a copy
of the repository's ``protocol/`` package, and inside it
``protocol/_vendor/websockets/`` (the pure-Python files of the websockets
package this Python has installed; its compiled speed-ups are left out and
websockets falls back to Python). It installs through Preferences > Add-ons >
Install (``bl_info``, Blender 3.4+) and as a Blender 4.2+ extension
(``blender_manifest.toml``). The protocol part comes from
``protocol/vendoring.py``, which the Krita plugin's build shares. Standard
library only.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "atelier_blender"
ADDON_DIR = Path(__file__).resolve().parent
REPO = ADDON_DIR.parent
if not __package__:
    # Run as ``python blender_addon/build.py``: sys.path[0] is blender_addon/, whose
    # ``protocol`` is only the development symlink; the repository root is needed to
    # import the build helper the Krita plugin's build shares.
    sys.path.insert(0, str(REPO))

from protocol.vendoring import (VendoringError, protocol_bundle, source_files,  # noqa: E402
                                websockets_source, write_zip)

ADDON_SUFFIXES = (".py", ".md", ".toml")
# Build-time and repository-only files that do not belong in the add-on.
SKIP_IN_ADDON = {"build.py", "protocol"}


def addon_version() -> tuple[int, ...]:
    """``bl_info["version"]`` read without importing the add-on."""
    tree = ast.parse((ADDON_DIR / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "bl_info" for t in node.targets):
            return tuple(ast.literal_eval(node.value)["version"])
    raise RuntimeError("blender_addon/__init__.py has no bl_info")


def build(out_dir: Path, websockets: Path | None = None) -> Path:
    version = ".".join(str(v) for v in addon_version())
    entries = [(f"{PACKAGE}/{path.relative_to(ADDON_DIR).as_posix()}", path)
               for path in source_files(ADDON_DIR, ADDON_SUFFIXES, skip=SKIP_IN_ADDON)]
    entries += protocol_bundle(PACKAGE, websockets_source(websockets))
    return write_zip(out_dir / f"{PACKAGE}-{version}.zip", entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "dist"), help="folder for the zip")
    parser.add_argument("--websockets", type=Path, help="websockets package folder to vendor "
                        "(default: the one this Python imports)")
    args = parser.parse_args(argv)
    try:
        print(build(Path(args.out), args.websockets))
    except VendoringError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
