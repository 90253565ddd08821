"""Soak the daemon: fuzz messages from concurrent clients, abrupt disconnects mid-job.

    python benchmarks/soak.py [--messages 100000] [--disconnects 100] [--clients 8]
                              [--url ws://HOST:PORT/ [--pid PID]] [--json out/soak.json]

Without ``--url`` it starts its own daemon on the tiny model (``--home`` names its Atelier
home). ``--clients`` connections send ``--messages`` fuzz cases between them, drawn by the
generators of ``benchmarks/fuzz_messages.py`` (the ones ``tests/test_fuzz.py`` uses), each
followed by a sentinel so that a missing or wrong reply is seen at once. Beside them, one
client runs ``--disconnects`` rounds of: submit a small job, drop the connection without a
closing handshake (right after ``accepted``, after ``started`` or after a ``progress``),
reconnect with its ``client_key`` and ``fetch`` the job.

Figures: deaths (the daemon process exited or stopped taking connections), hangs (a reply
that did not come within ``--timeout``), lost results (a disconnected job whose fetch did
not deliver its images), unexpected closes, bad replies (non-error replies to bad
messages, undocumented codes, unbounded echoes), the daemon's RSS at the start, peak and
end (own daemon, or ``--pid``), and fuzz cases per second. Exit status 1 when any of the
failure figures is not zero.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):      # run as a file: the repository root is what imports need
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: E402

from benchmarks.daemon_process import DaemonProcess  # noqa: E402
from benchmarks.fuzz_messages import (SMALL_JOB, Case, FuzzConnection, Hang,  # noqa: E402
                                      RssSampler, fuzz_cases, summarize)
from benchmarks.measure import format_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECONNECT_EVERY = 200          # cases on one connection before a fresh one
BEFORE_HELLO = 2               # cases sent before hello on each fresh connection
KEEP_PROBLEMS = 5000           # problems kept for the summary (all are counted)
CONNECT_ATTEMPTS = 20          # failed connections in a row before a fuzz client gives up
MiB = 1024 * 1024


# ------------------------------------------------------------------ tallies
@dataclass
class Tally:
    cases: int = 0
    frames: int = 0
    problems: int = 0
    hangs: int = 0
    closes: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    lost_results: int = 0
    lost_examples: list[str] = field(default_factory=list)
    stopped: str = ""                  # why the run ended early, if it did
    found: list[tuple[Case, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_case(self, case: Case, problems: Sequence[str], hung: bool, closed: bool) -> None:
        with self.lock:
            self.cases += 1
            self.frames += len(case.frames)
            self.problems += len(problems)
            self.hangs += hung
            self.closes += closed
            room = KEEP_PROBLEMS - len(self.found)
            self.found.extend((case, p) for p in list(problems)[:max(room, 0)])

    def lost(self, why: str, hung: bool = False) -> None:
        with self.lock:
            self.lost_results += 1
            self.hangs += hung
            if len(self.lost_examples) < 20:
                self.lost_examples.append(why)


# ------------------------------------------------------------------ workers
def fuzz_client(url: str, seed: int, count: int, timeout: float, tally: Tally,
                stop: threading.Event) -> None:
    """``count`` fuzz cases over connections that start over every RECONNECT_EVERY cases
    (each fresh one first gets a few cases before its hello)."""
    rng = random.Random(seed)
    done, failures = 0, 0
    while done < count and not stop.is_set() and failures < CONNECT_ATTEMPTS:
        conn, sent = _connect_with_early_cases(url, rng, min(BEFORE_HELLO, count - done),
                                               timeout, tally)
        done += sent
        if conn is None:
            failures += 1
            time.sleep(0.5)
            continue
        failures = 0
        for case in fuzz_cases(rng, min(RECONNECT_EVERY, count - done)):
            outcome = conn.run_case(case)
            tally.add_case(case, outcome.problems, outcome.hung, outcome.closed is not None)
            done += 1
            if outcome.hung or outcome.closed or stop.is_set():
                break
        conn.close()


def _connect_with_early_cases(url: str, rng: random.Random, early: int, timeout: float,
                              tally: Tally) -> tuple[Optional[FuzzConnection], int]:
    """A connection after hello (None when that failed), and the cases sent before it."""
    sent = 0
    try:
        conn = FuzzConnection(url, timeout=timeout, hello=False)
        for case in fuzz_cases(rng, early, before_hello=True):
            outcome = conn.run_case(case, sentinel=False)
            tally.add_case(case, outcome.problems, outcome.hung, outcome.closed is not None)
            sent += 1
            if outcome.hung or outcome.closed:
                conn.close()
                return None, sent
        conn.hello(name="soak")
        return conn, sent
    except (OSError, ConnectionClosed, InvalidHandshake, Hang, RuntimeError):
        with tally.lock:
            tally.connect_failures += 1
        return None, sent


def disconnect_rounds(url: str, rounds: int, seed: int, timeout: float, tally: Tally,
                      stop: threading.Event) -> None:
    """Submit, drop the connection mid-job, reconnect with the client key, fetch."""
    rng = random.Random(seed)
    key: Optional[str] = None
    for number in range(rounds):
        if stop.is_set():
            return
        key = _one_disconnect(url, rng, number, key, timeout, tally)
        with tally.lock:
            tally.disconnects += 1


def _one_disconnect(url: str, rng: random.Random, number: int, key: Optional[str],
                    timeout: float, tally: Tally) -> Optional[str]:
    job = {**SMALL_JOB, "steps": rng.randint(2, 8), "seed": number,
           "preview_every": rng.choice([0, 1])}
    when = rng.choice(["accepted", "started", "progress"])
    gone: Optional[FuzzConnection] = None
    try:
        gone = FuzzConnection(url, timeout=timeout, client_key=key, name="soak-disconnect")
        key = gone.client_key or key
        job_id = gone.submit(job, ref=f"disconnect-{number}")
        if when != "accepted":
            gone.wait_job(job_id, timeout, until=(when, "result", "cancelled", "error"))
        gone.abort()
    except (OSError, ConnectionClosed, InvalidHandshake, Hang, RuntimeError) as exc:
        if gone is not None:
            gone.close()
        tally.lost(f"round {number}: before the disconnect: {type(exc).__name__}: {exc}",
                   hung=isinstance(exc, Hang))
        return key
    try:
        back = FuzzConnection(url, timeout=timeout, client_key=key, name="soak-disconnect")
        end = back.fetch(job_id, timeout=max(timeout, 60.0))
        back.close()
    except (OSError, ConnectionClosed, InvalidHandshake, Hang, RuntimeError) as exc:
        tally.lost(f"round {number}: fetch after reconnecting ({when}): "
                   f"{type(exc).__name__}: {exc}", hung=isinstance(exc, Hang))
        return key
    if not end.ok:
        tally.lost(f"round {number}: fetch after reconnecting ({when}) got {end.message} "
                   f"with {end.result_frames} RESULT frames")
    return key


def watch(alive: Any, tally: Tally, max_hangs: int, stop: threading.Event,
          deaths: list[int]) -> None:
    """Stop everything when the daemon dies or hangs too often (each hang costs --timeout)."""
    while not stop.wait(0.2):
        if not alive():
            deaths.append(1)
            stop.set()
        if tally.hangs >= max_hangs:
            tally.stopped = f"stopped after {tally.hangs} hangs"
            stop.set()


def still_serving(url: str, timeout: float) -> bool:
    try:
        conn = FuzzConnection(url, timeout=timeout, name="soak-check")
    except (OSError, ConnectionClosed, InvalidHandshake, Hang, RuntimeError):
        return False
    try:
        return conn.run_small_job(timeout=max(timeout, 60.0), seed=1).ok
    except (OSError, ConnectionClosed, Hang, RuntimeError):
        return False
    finally:
        conn.close()


# ------------------------------------------------------------------ the run
def soak(url: str, pid: Optional[int], alive: Any, args: argparse.Namespace) -> dict[str, Any]:
    tally, stop, deaths = Tally(), threading.Event(), []
    share = [args.messages // args.clients + (i < args.messages % args.clients)
             for i in range(args.clients)]
    workers = [threading.Thread(target=fuzz_client, name=f"fuzz-{i}",
                                args=(url, args.seed + i, share[i], args.timeout, tally, stop))
               for i in range(args.clients)]
    workers.append(threading.Thread(target=disconnect_rounds, name="disconnects",
                                    args=(url, args.disconnects, args.seed - 1, args.timeout,
                                          tally, stop)))
    threading.Thread(target=watch, args=(alive, tally, args.max_hangs, stop, deaths),
                     daemon=True).start()
    with RssSampler(pid) as rss:
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - started
        serving = not deaths and still_serving(url, args.timeout)
    stop.set()
    figures = {
        "deaths": len(deaths) or int(not serving), "hangs": tally.hangs,
        "lost_results": tally.lost_results, "unexpected_closes": tally.closes,
        "bad_replies": tally.problems - tally.hangs - tally.closes,
        "connect_failures": tally.connect_failures,
        "messages": tally.cases, "frames": tally.frames, "disconnects": tally.disconnects,
        "seconds": round(seconds, 2), "messages_per_s": round(tally.cases / seconds, 1),
        "rss_start_mb": _mb(rss.start), "rss_peak_mb": _mb(rss.peak), "rss_end_mb": _mb(rss.end),
    }
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"settings": settings, "stopped": tally.stopped or ("the daemon died" if deaths else ""),
            "figures": figures, "lost_examples": tally.lost_examples,
            "problems": summarize(tally.found) if tally.found else ""}


def _mb(value: int) -> Optional[float]:
    return round(value / MiB, 1) if value else None


FAILURES = ("deaths", "hangs", "lost_results", "unexpected_closes", "bad_replies")


def print_report(report: dict[str, Any]) -> None:
    figures = report["figures"]
    print(format_table(["figure", "value"], [[k, v] for k, v in figures.items()]))
    if report["stopped"]:
        print("run", report["stopped"])
    for line in report["lost_examples"]:
        print("lost:", line)
    if report["problems"]:
        print(report["problems"])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="fuzz cases in all")
    parser.add_argument("--disconnects", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--url", default=None, help="a running daemon (default: start one)")
    parser.add_argument("--pid", type=int, default=None, help="its process, for RSS")
    parser.add_argument("--home", type=Path, default=None,
                        help="Atelier home of the daemon started here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds a reply may take before it counts as a hang")
    parser.add_argument("--max-hangs", type=int, default=50,
                        help="stop the run after this many hangs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.messages < 0 or args.disconnects < 0:
        parser.error("--clients must be at least 1, --messages and --disconnects not negative")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    own: Optional[DaemonProcess] = None
    if args.url is None:
        home = args.home or Path(tempfile.gettempdir()) / "atelier-soak"
        offline = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        own = DaemonProcess(home, env=offline, log_lines=200).start(timeout=180)
        assert own.proc is not None and own.url is not None
        url, pid, proc = own.url, own.proc.pid, own.proc
        alive = lambda: proc.poll() is None   # noqa: E731
    else:
        url, pid = args.url, args.pid
        alive = lambda: pid is None or Path(f"/proc/{pid}").exists()   # noqa: E731
    try:
        report = soak(url, pid, alive, args)
    finally:
        if own is not None:
            own.stop()
    print_report(report)
    if args.json is not None:
        write_json(args.json, report)
    return 1 if any(report["figures"][name] for name in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
