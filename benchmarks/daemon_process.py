"""A daemon in a subprocess (``python -m backend serve``) on a free loopback port, for
the tests' fixtures and the soak benchmark alike."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class DaemonProcess:
    """``python -m backend serve`` on a free loopback port; ``url`` once it is ready."""

    READY = re.compile(r"ready on (ws://\S+)")

    def __init__(self, home: Path, *extra: str, env: dict[str, str] | None = None,
                 log_lines: int | None = None, new_session: bool = False):
        self.home = home
        self.new_session = new_session      # its own process group, for a signal to all of it
        self.args = [sys.executable, "-m", "backend", "serve", "--model", "tiny", "--port", "0",
                     "--home", str(home), *extra]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url: str | None = None
        # a bounded log for long runs (the soak): the last ``log_lines`` lines
        self.log: collections.deque[str] = collections.deque(maxlen=log_lines)

    def start(self, timeout: float = 120.0) -> "DaemonProcess":
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=self.new_session)
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                match = self.READY.search(line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("daemon did not start:\n" + "".join(self.log))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def port(self) -> int:
        assert self.url is not None
        return int(self.url.rstrip("/").rsplit(":", 1)[1])
