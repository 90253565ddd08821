"""protocol/vendoring.py: what both add-on builds put under ``<PKG>/protocol/``, and
proof that the vendored client works in Python 3.10 (the Python of official Blender 3.x)
against a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from blender_addon import build as blender_build
from krita_plugin import build as krita_build
from protocol import vendoring

REPO = Path(__file__).resolve().parents[1]


def protocol_part(zip_path: Path, package: str) -> dict[str, bytes]:
    """The files under ``package/protocol/`` in the zip, by path below it."""
    prefix = f"{package}/protocol/"
    with zipfile.ZipFile(zip_path) as archive:
        return {name[len(prefix):]: archive.read(name) for name in archive.namelist()
                if name.startswith(prefix) and not name.endswith("/")}


@pytest.fixture(scope="module")
def blender_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blender_build.build(tmp_path_factory.mktemp("blender-zip"))


@pytest.fixture(scope="module")
def krita_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return krita_build.build(tmp_path_factory.mktemp("krita-zip"))


def test_both_add_ons_ship_the_same_protocol_and_websockets(blender_zip: Path,
                                                            krita_zip: Path) -> None:
    blender = protocol_part(blender_zip, blender_build.PACKAGE)
    krita = protocol_part(krita_zip, krita_build.PACKAGE)
    assert blender == krita

    installed = vendoring.websockets_source()
    expected = {f"_vendor/websockets/{p.relative_to(installed).as_posix()}"
                for p in installed.rglob("*.py") if "__pycache__" not in p.parts}
    assert expected and expected <= set(blender)
    assert {"client.py", "_websocket.py", "PROTOCOL.md", "_vendor/__init__.py",
            "_vendor/websockets/sync/client.py"} <= set(blender)
    assert "vendoring.py" not in blender          # build-time only
    assert not any(name.endswith((".so", ".pyd", ".c", ".pyi", ".pyc")) for name in blender)
    licence = blender["_vendor/websockets/LICENSE"].decode()
    assert licence == vendoring.websockets_licence(installed).read_text()
    assert "Redistribution and use in source and binary forms" in licence


def test_every_folder_has_its_entry(blender_zip: Path, krita_zip: Path) -> None:
    # Krita's importer looks for the package's folder entry; both zips get them.
    for target in (blender_zip, krita_zip):
        names = zipfile.ZipFile(target).namelist()
        folders = {name.rsplit("/", 1)[0] + "/" for name in names if "/" in name.rstrip("/")}
        assert folders <= set(names), target


def fake_websockets(root: Path, requires_python: str | None, licence: bool = True) -> Path:
    """A websockets-shaped folder with its dist-info, as pip leaves it."""
    package = root / "websockets"
    (package / "sync").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sync" / "client.py").write_text("def connect(): ...\n")
    info = root / "websockets-99.0.dist-info"
    (info / "licenses").mkdir(parents=True)
    header = f"Requires-Python: {requires_python}\n" if requires_python else ""
    (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: websockets\n{header}")
    if licence:
        (info / "licenses" / "LICENSE").write_text("BSD-3-Clause text\n")
    return package


def test_a_websockets_needing_a_newer_python_than_the_hosts_is_refused(tmp_path: Path) -> None:
    package = fake_websockets(tmp_path, ">=3.11")
    with pytest.raises(vendoring.VendoringError, match=r">=3.11.*Python 3.10"):
        vendoring.protocol_bundle("pkg", vendoring.websockets_source(package))


def test_websockets_without_its_licence_is_refused(tmp_path: Path) -> None:
    package = fake_websockets(tmp_path, ">=3.10", licence=False)
    with pytest.raises(vendoring.VendoringError, match="no LICENSE"):
        vendoring.protocol_bundle("pkg", package)
    (tmp_path / "websockets-99.0.dist-info" / "LICENSE").write_text("BSD\n")
    names = [name for name, _ in vendoring.protocol_bundle("pkg", package)]
    assert "pkg/protocol/_vendor/websockets/LICENSE" in names


def test_the_build_cli_names_a_folder_that_is_not_websockets(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(REPO / "krita_plugin" / "build.py"),
                          "--out", str(tmp_path), "--websockets", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no sync/client.py" in out.stderr
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ Python 3.10
def python310() -> str | None:
    """A Python 3.10 interpreter: on PATH, else one pyenv installed."""
    candidates = [shutil.which("python3.10"),
                  *sorted(map(str, Path.home().glob(".pyenv/versions/3.10*/bin/python3.10")))]
    for candidate in candidates:
        if candidate is None:
            continue
        probe = subprocess.run([candidate, "-I", "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 10)":
            return candidate
    return None


# Runs in Python 3.10 with only the extracted protocol part on sys.path.
CLIENT_IN_310 = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
assert importlib.util.find_spec("websockets") is None, "an installed websockets is visible"
from atelier_blender.protocol import GenerateRequest, JobDone, _websocket
from atelier_blender.protocol.client import AtelierClient
with AtelierClient(sys.argv[2], client_name="python3.10-probe", reconnect=False) as client:
    client.wait_connected(30)
    done = client.run_job(GenerateRequest(prompt="a red cube", width=64, height=64, steps=3,
                                          seed=7), timeout=300)
assert isinstance(done, JobDone), done
image = done.images[0]
print(json.dumps({"python": list(sys.version_info[:2]), "connect": _websocket.connect.__module__,
                  "width": image.width, "height": image.height, "bytes": len(image.data),
                  "format": image.format.name, "steps": done.result.params.steps}))
"""


def test_vendored_client_runs_a_job_in_python_310(blender_zip: Path, daemon,
                                                  tmp_path: Path) -> None:
    interpreter = python310()
    if interpreter is None:
        reason = "no Python 3.10 (python3.10 on PATH or ~/.pyenv/versions/3.10*)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must prove the vendored client on Python 3.10: {reason}")
        pytest.skip(reason)
    prefix = f"{blender_build.PACKAGE}/protocol/"
    with zipfile.ZipFile(blender_zip) as archive:
        archive.extractall(tmp_path, [n for n in archive.namelist() if n.startswith(prefix)])
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    out = subprocess.run([interpreter, "-I", "-c", CLIENT_IN_310, str(tmp_path), daemon.url],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["python"] == [3, 10]
    assert result["connect"] == "atelier_blender.protocol._vendor.websockets.sync.client"
    assert (result["width"], result["height"], result["format"]) == (64, 64, "RGBA8")
    assert result["bytes"] == 64 * 64 * 4 and result["steps"] == 3
