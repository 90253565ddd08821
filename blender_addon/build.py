"""Build the installable add-on zip.

    python -m blender_addon.build --out dist/
    python blender_addon/build.py --out dist/

The zip holds one folder, ``atelier_blender/``: this add-on's modules, a copy
of the repository's ``protocol/`` package, and inside it
``protocol/_vendor/websockets/`` (the pure-Python files of the websockets
package this Python has installed; its compiled speed-ups are left out and
websockets falls back to Python). It installs through Preferences > Add-ons >
Install (``bl_info``, Blender 3.4+) and as a Blender 4.2+ extension
(``blender_manifest.toml``). Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import zipfile
from pathlib import Path

PACKAGE = "atelier_blender"
ADDON_DIR = Path(__file__).resolve().parent
REPO = ADDON_DIR.parent
# Build-time and repository-only files that do not belong in the add-on.
SKIP_IN_ADDON = {"build.py", "protocol"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".pyd", ".c", ".pyi"}
# Fixed timestamp: the same sources give a byte-identical zip.
ZIP_DATE = (2024, 1, 1, 0, 0, 0)


def addon_version() -> tuple[int, ...]:
    """``bl_info["version"]`` read without importing the add-on."""
    tree = ast.parse((ADDON_DIR / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "bl_info" for t in node.targets):
            return tuple(ast.literal_eval(node.value)["version"])
    raise RuntimeError("blender_addon/__init__.py has no bl_info")


def _files(root: Path, skip_top: set[str] = frozenset()) -> list[Path]:
    """Files under ``root`` worth shipping, sorted; caches and compiled code left out."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip_top or "__pycache__" in rel.parts or "_vendor" in rel.parts:
            continue
        if path.is_file() and path.suffix not in SKIP_SUFFIXES:
            found.append(path)
    return found


def websockets_dir(explicit: str | None = None) -> tuple[Path, Path | None]:
    """The websockets package folder to vendor, and its licence file if found."""
    if explicit:
        folder = Path(explicit)
    else:
        spec = importlib.util.find_spec("websockets")
        if spec is None or spec.origin is None:
            raise SystemExit("websockets is not installed in this Python; install it or pass "
                             "--websockets PATH/TO/websockets")
        folder = Path(spec.origin).parent
    if not (folder / "sync" / "client.py").is_file():
        raise SystemExit(f"{folder} does not look like websockets >= 13 (no sync/client.py)")
    licences = sorted(folder.parent.glob("websockets-*.dist-info/licenses/LICENSE")) + \
        sorted(folder.parent.glob("websockets-*.dist-info/LICENSE"))
    return folder, (licences[0] if licences else None)


def build(out_dir: Path, websockets: str | None = None) -> Path:
    version = ".".join(str(v) for v in addon_version())
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}-{version}.zip"
    ws_dir, ws_licence = websockets_dir(websockets)
    entries: list[tuple[str, Path]] = []
    entries += [(f"{PACKAGE}/{p.relative_to(ADDON_DIR).as_posix()}", p)
                for p in _files(ADDON_DIR, SKIP_IN_ADDON)]
    entries += [(f"{PACKAGE}/protocol/{p.relative_to(REPO / 'protocol').as_posix()}", p)
                for p in _files(REPO / "protocol")]
    vendor = f"{PACKAGE}/protocol/_vendor"
    entries += [(f"{vendor}/websockets/{p.relative_to(ws_dir).as_posix()}", p)
                for p in _files(ws_dir)]
    if ws_licence is not None:
        entries.append((f"{vendor}/websockets/LICENSE", ws_licence))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo(f"{vendor}/__init__.py", ZIP_DATE),
                         '"""Third-party packages shipped with the add-on (built)."""\n')
        for name, path in entries:
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "dist"), help="folder for the zip")
    parser.add_argument("--websockets", help="websockets package folder to vendor "
                        "(default: the one this Python imports)")
    args = parser.parse_args(argv)
    print(build(Path(args.out), args.websockets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
