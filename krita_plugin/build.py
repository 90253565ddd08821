"""Build the Krita plugin zip: ``python krita_plugin/build.py --out dist/``.

The zip holds what Krita's "Tools > Scripts > Import Python Plugin from File"
expects: ``atelier_krita.desktop`` and the ``atelier_krita/`` package, with the
repository's ``protocol/`` copied to ``atelier_krita/protocol/`` and the pure-Python
files of the installed ``websockets`` package copied to
``atelier_krita/protocol/_vendor/websockets/`` (Krita has no websocket client of its
own; the compiled speedups are left out, websockets runs without them).

In the repository ``atelier_krita/protocol`` is a symlink to ``../../protocol`` so
the plugin imports the protocol the same way in development and when installed;
the build replaces it with real files. Vendored code only ever lives in the zip.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import zipfile
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PACKAGE = "atelier_krita"
# Fixed timestamps make the zip depend only on the files it holds.
ZIP_TIME = (2024, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__"}


def _files(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if any(part in SKIP_DIRS for part in path.relative_to(root).parts):
            continue
        if path.is_file() and path.suffix in suffixes:
            yield path


def websockets_source() -> Path:
    spec = importlib.util.find_spec("websockets")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("build.py: the websockets package is not installed in this Python "
                         f"({sys.executable}); install it or pass --websockets DIR")
    return Path(list(spec.submodule_search_locations)[0])


def websockets_license(source: Path) -> Path | None:
    for info in sorted(source.parent.glob("websockets-*.dist-info")):
        for name in ("licenses/LICENSE", "LICENSE"):
            if (info / name).is_file():
                return info / name
    return None


def plan_zip(websockets_dir: Path) -> list[tuple[str, Path]]:
    """(name in the zip, file on disk) for every file the plugin ships."""
    entries: list[tuple[str, Path]] = [(f"{PACKAGE}.desktop", HERE / f"{PACKAGE}.desktop")]
    package = HERE / PACKAGE
    for path in _files(package, (".py", ".md")):
        relative = path.relative_to(package)
        if relative.parts[0] == "protocol":
            continue  # the development symlink; real files come from the repository below
        entries.append((f"{PACKAGE}/{relative.as_posix()}", path))
    for path in _files(REPO / "protocol", (".py", ".md")):
        if path.relative_to(REPO / "protocol").parts[0] == "_vendor":
            continue  # another add-on's build output, never the source
        entries.append((f"{PACKAGE}/protocol/{path.relative_to(REPO / 'protocol').as_posix()}",
                        path))
    vendor = f"{PACKAGE}/protocol/_vendor"
    entries.append((f"{vendor}/__init__.py", HERE / "vendor_init.py"))
    for path in _files(websockets_dir, (".py", ".typed")):
        entries.append((f"{vendor}/websockets/{path.relative_to(websockets_dir).as_posix()}",
                        path))
    license_file = websockets_license(websockets_dir)
    if license_file is not None:
        entries.append((f"{vendor}/websockets/LICENSE", license_file))
    return entries


def build(out_dir: Path, websockets_dir: Path | None = None) -> Path:
    websockets_dir = websockets_dir or websockets_source()
    entries = plan_zip(websockets_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}.zip"
    folders: set[str] = set()
    for name, _ in entries:
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))
    partial = target.with_suffix(".zip.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        # Krita's importer finds the package by its folder entry, so write those too.
        for folder in sorted(folders):
            info = zipfile.ZipInfo(folder, ZIP_TIME)
            info.external_attr = 0o40755 << 16
            archive.writestr(info, b"")
        for name, path in sorted(entries):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist",
                        help="folder to write atelier_krita.zip into (default: dist/)")
    parser.add_argument("--websockets", type=Path, default=None,
                        help="websockets package folder to vendor (default: the installed one)")
    args = parser.parse_args(argv)
    target = build(args.out, args.websockets)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
