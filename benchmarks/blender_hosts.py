"""Where the Blenders are and how a script runs in one, for the host tests
(tests/test_blender_host.py, test_blender_panel.py) and the Texture from Views benchmark
alike. Three Blenders:

- ``blender-3.4``: Debian's ``blender`` binary (``--background --factory-startup``);
- ``bpy-4.2``: the ``bpy`` 4.2 wheel in its own Python 3.11 venv; found through
  ``ATELIER_BPY_PYTHON``, else ``.venv-bpy/bin/python`` in the repository (what
  scripts/setup-bpy.sh makes), else ``/work/venv-bpy/bin/python``;
- ``bpy-5.0``: the ``bpy`` 5.0 wheel (compositor as node groups), likewise through
  ``ATELIER_BPY5_PYTHON``, else ``.venv-bpy5/bin/python``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence, Union

REPO = Path(__file__).resolve().parents[1]
HOST_SCRIPTS = REPO / "tests" / "host" / "blender"
RUN_TIMEOUT = 300

# The Pythons holding a bpy wheel, per host: the environment variable, then the venvs.
BPY_PYTHONS = {
    "bpy-4.2": ("ATELIER_BPY_PYTHON", REPO / ".venv-bpy" / "bin" / "python",
                Path("/work/venv-bpy/bin/python")),
    "bpy-5.0": ("ATELIER_BPY5_PYTHON", REPO / ".venv-bpy5" / "bin" / "python"),
}
BPY_HOSTS = tuple(BPY_PYTHONS)
HOSTS = ("blender-3.4", *BPY_HOSTS)


class MissingHost(LookupError):
    """This Blender is not installed here; the message says how to get it."""


def bpy_python(host: str) -> Optional[str]:
    variable, *paths = BPY_PYTHONS[host]
    for candidate in (os.environ.get(variable), *paths):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def host_command(host: str, script: Union[str, Path]) -> list[str]:
    """The command that runs ``script`` in ``host`` in background mode; MissingHost if
    that Blender is not here."""
    if host == "blender-3.4":
        blender = shutil.which("blender")
        if blender is None:
            raise MissingHost("Debian's blender is not installed "
                              "(apt-get install blender python3-numpy)")
        return [blender, "--background", "--factory-startup", "--python-exit-code", "1",
                "--python", str(script)]
    python = bpy_python(host)
    if python is None:
        raise MissingHost(f"no Python with the {host} wheel (run scripts/setup-bpy.sh, or "
                          f"set {BPY_PYTHONS[host][0]})")
    return [python, str(script)]


def window_command(script: Union[str, Path], xvfb_args: Sequence[str] = (),
                   blender_args: Sequence[str] = ()) -> list[str]:
    """Blender 3.4 with a window under Xvfb running ``script`` (the bpy wheels cannot open
    a window); MissingHost without blender or xvfb-run."""
    blender, xvfb = shutil.which("blender"), shutil.which("xvfb-run")
    if blender is None or xvfb is None:
        raise MissingHost("blender and xvfb-run are needed (apt-get install blender xvfb)")
    return [xvfb, "-a", *xvfb_args, blender, "--factory-startup", *blender_args,
            "--python", str(script)]


def host_env(folder: Path, **extra: str) -> dict[str, str]:
    """Everything Blender writes for a user stays in ``folder``."""
    env = {**os.environ, "ATELIER_SCENARIO_DIR": str(folder),
           "BLENDER_USER_RESOURCES": str(folder / "user-resources"),
           "BLENDER_USER_SCRIPTS": str(folder / "user-scripts"),
           "BLENDER_USER_CONFIG": str(folder / "user-config"),
           "BLENDER_USER_EXTENSIONS": str(folder / "user-extensions"), **extra}
    env.pop("PYTHONPATH", None)   # the add-on must work from its zip alone
    return env


def run_in_host(command: list[str], folder: Path, **extra_env: str
                ) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=folder, env=host_env(folder, **extra_env),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
