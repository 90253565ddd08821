"""Build-time helper: put this package and a vendored websockets into an add-on zip.

Used by ``blender_addon/build.py`` and ``krita_plugin/build.py`` only; nothing in
the protocol or the add-ons imports it at run time, and the add-on zips leave it
out. Standard library only, so it runs in whatever Python builds the add-ons.

An add-on ``PKG`` ships ``PKG/protocol/`` (the files of this package) and
``PKG/protocol/_vendor/websockets/`` (the pure-Python files of an installed
websockets plus its licence); ``protocol/_websocket.py`` prefers that copy over
an installed one. The compiled speed-ups are left out: websockets falls back to
Python, and the zip stays the same on every platform.
"""

from __future__ import annotations

import importlib.util
import re
import zipfile
from pathlib import Path
from collections import Counter
from typing import Iterable

PROTOCOL_DIR = Path(__file__).resolve().parent
# The oldest Python an add-on runs in: official Blender 3.x bundles 3.10.
HOST_PYTHON = (3, 10)
# Fixed timestamp: the same sources give a byte-identical zip.
ZIP_DATE = (2024, 1, 1, 0, 0, 0)
PROTOCOL_SUFFIXES = (".py", ".md")
WEBSOCKETS_SUFFIXES = (".py", ".typed")
BUILD_ONLY = {"vendoring.py"}
VENDOR_INIT = b'"""Third-party packages vendored into the add-on when it is built."""\n'

ZipSource = bytes | Path   # a zip entry's content, or the file holding it


class VendoringError(RuntimeError):
    """The websockets to vendor is missing, incomplete, or will not run in the hosts."""


def source_files(root: Path, suffixes: tuple[str, ...],
                 skip: Iterable[str] = ()) -> list[Path]:
    """Files under ``root`` ending in ``suffixes``, sorted.

    Caches and ``_vendor`` folders (an earlier build's output) are left out, and so
    are top-level entries of ``root`` named in ``skip``.
    """
    skip = set(skip)
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or "__pycache__" in rel.parts or "_vendor" in rel.parts:
            continue
        if path.suffix in suffixes and path.is_file():
            found.append(path)
    return found


def websockets_source(explicit: Path | None = None) -> Path:
    """The websockets package folder to vendor: ``explicit``, else the one this Python imports."""
    if explicit is not None:
        folder = Path(explicit)
    else:
        spec = importlib.util.find_spec("websockets")
        if spec is None or not spec.submodule_search_locations:
            raise VendoringError("websockets is not installed in this Python; install it or "
                                 "pass --websockets PATH/TO/websockets")
        folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / "sync" / "client.py").is_file():
        raise VendoringError(f"{folder} does not look like websockets >= 13 "
                             "(no sync/client.py, which the protocol client uses)")
    return folder


def _dist_info(websockets_dir: Path) -> Path:
    found = sorted(websockets_dir.parent.glob("websockets-*.dist-info"))
    if len(found) != 1:
        raise VendoringError(
            f"expected one websockets-*.dist-info beside {websockets_dir}, found {len(found)}; "
            "it holds the licence that must ship with the vendored copy")
    return found[0]


def websockets_licence(websockets_dir: Path) -> Path:
    info = _dist_info(websockets_dir)
    for name in ("licenses/LICENSE", "LICENSE"):
        if (info / name).is_file():
            return info / name
    raise VendoringError(f"{info} has no LICENSE; websockets cannot ship without it")


def check_host_python(websockets_dir: Path) -> None:
    """Refuse a websockets whose ``Requires-Python`` excludes the hosts' Python."""
    metadata = (_dist_info(websockets_dir) / "METADATA").read_text(encoding="utf-8")
    match = re.search(r"^Requires-Python:\s*(.+)$", metadata, re.MULTILINE)
    if match is None:
        return
    for clause in match.group(1).split(","):
        floor = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+).*", clause)
        if floor and (int(floor.group(1)), int(floor.group(2))) > HOST_PYTHON:
            wanted = ".".join(map(str, HOST_PYTHON))
            raise VendoringError(
                f"the websockets at {websockets_dir} requires Python {match.group(1).strip()}, "
                f"but the add-ons must run on Python {wanted} (Blender 3.x); build with "
                "websockets<17 (pyproject.toml pins it)")


def protocol_bundle(prefix: str, websockets_dir: Path) -> list[tuple[str, ZipSource]]:
    """Zip entries for ``prefix/protocol/``: this package, vendored websockets, its licence."""
    check_host_python(websockets_dir)
    protocol = f"{prefix}/protocol"
    vendor = f"{protocol}/_vendor"
    entries: list[tuple[str, ZipSource]] = [
        (f"{protocol}/{path.relative_to(PROTOCOL_DIR).as_posix()}", path)
        for path in source_files(PROTOCOL_DIR, PROTOCOL_SUFFIXES, skip=BUILD_ONLY)]
    entries.append((f"{vendor}/__init__.py", VENDOR_INIT))
    entries += [(f"{vendor}/websockets/{path.relative_to(websockets_dir).as_posix()}", path)
                for path in source_files(websockets_dir, WEBSOCKETS_SUFFIXES)]
    entries.append((f"{vendor}/websockets/LICENSE", websockets_licence(websockets_dir)))
    return entries


def write_zip(target: Path, entries: Iterable[tuple[str, ZipSource]]) -> Path:
    """Write ``entries`` (name in the zip, bytes or a file) to ``target``, reproducibly.

    Every folder gets its own entry: Krita's plugin importer finds the package by
    it, and Blender's installers (legacy add-on and 4.2+ extension) accept it.
    Written beside ``target`` first, so a failed build never leaves half a zip.
    """
    entries = sorted(entries, key=lambda entry: entry[0])
    names = [name for name, _ in entries]
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise ValueError(f"zip entries listed twice: {twice}")
    folders: set[str] = set()
    for name in names:
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(partial, "w") as archive:
        for folder in sorted(folders):
            info = zipfile.ZipInfo(folder, ZIP_DATE)
            info.external_attr = 0o40755 << 16
            archive.writestr(info, b"")
        for name, source in entries:
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source if isinstance(source, bytes) else source.read_bytes())
    partial.replace(target)
    return target
