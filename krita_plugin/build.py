"""Build the Krita plugin zip: ``python krita_plugin/build.py --out dist/``.

The zip holds what Krita's "Tools > Scripts > Import Python Plugin from File"
expects: ``atelier_krita.desktop`` and the ``atelier_krita/`` package, with the
repository's ``protocol/`` copied to ``atelier_krita/protocol/`` and the pure-Python
files of the installed ``websockets`` package copied to
``atelier_krita/protocol/_vendor/websockets/`` (Krita has no websocket client of its
own; the compiled speedups are left out, websockets runs without them). That part
of the zip comes from ``protocol/vendoring.py``, which the Blender add-on's build shares.

In the repository ``atelier_krita/protocol`` is a symlink to ``../../protocol`` so
the plugin imports the protocol the same way in development and when installed;
the build replaces it with real files. Vendored code only ever lives in the zip.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if not __package__:
    # Run as ``python krita_plugin/build.py``: only krita_plugin/ is on sys.path, and the
    # build helper it shares with the Blender add-on's build lives in the repository root.
    sys.path.insert(0, str(REPO))

from protocol.vendoring import (VendoringError, protocol_bundle, source_files,  # noqa: E402
                                websockets_source, write_zip)

PACKAGE = "atelier_krita"


def plan_zip(websockets_dir: Path) -> list[tuple[str, bytes | Path]]:
    """(name in the zip, content or file on disk) for every file the plugin ships."""
    package = HERE / PACKAGE
    entries: list[tuple[str, bytes | Path]] = [(f"{PACKAGE}.desktop", HERE / f"{PACKAGE}.desktop"),
                                               # default shortcuts; Krita's importer installs it
                                               (f"{PACKAGE}.action", HERE / f"{PACKAGE}.action")]
    # ``protocol`` there is the development symlink; protocol_bundle adds the real files.
    entries += [(f"{PACKAGE}/{path.relative_to(package).as_posix()}", path)
                for path in source_files(package, (".py", ".md"), skip={"protocol"})]
    return entries + protocol_bundle(PACKAGE, websockets_dir)


def build(out_dir: Path, websockets_dir: Path | None = None) -> Path:
    return write_zip(out_dir / f"{PACKAGE}.zip", plan_zip(websockets_source(websockets_dir)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist",
                        help="folder to write atelier_krita.zip into (default: dist/)")
    parser.add_argument("--websockets", type=Path, default=None,
                        help="websockets package folder to vendor (default: the installed one)")
    args = parser.parse_args(argv)
    try:
        print(build(args.out, args.websockets))
    except VendoringError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
