"""Running one worker process: stream its JSON lines, show progress, measure its peak
memory, and turn a worker that dies into a failure row that says why and how to rerun it.

Workers run one at a time: two frameworks compiling side by side on a small machine is how
a run ran out of memory (an XLA worker died with ``Cannot allocate memory``, signal 11).
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
STDERR_LINES = 12
"""Lines of a dead worker's stderr quoted in its failure row."""
LOW_MEMORY = 3 * 2**29
"""Below this much available memory (1.5 GiB) a worker's start comes with a warning."""


@dataclass
class Job:
    """One worker: a backend, the modes, devices and input dtypes it runs, its case filter,
    the selection (``full`` or ``representative``) and extra environment variables."""

    backend: str
    modes: list[str]
    devices: list[str]
    dtypes: list[str]
    cases: str = ""
    select: str = "representative"
    env: dict[str, str] = field(default_factory=dict)
    adapter: bool = False  # ``backend`` is a ``module:Class`` of the user's own

    def arguments(self) -> list[str]:
        return ["--backend", self.backend, "--dtypes", ",".join(self.dtypes),
                "--modes", ",".join(self.modes), "--devices", ",".join(self.devices),
                "--cases", self.cases, "--select", self.select]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "conformance.worker", *self.arguments()]

    def label(self) -> str:
        return self.backend + (" (fused)" if self.modes == ["fused"] else "")


def python_name() -> str:
    """``python`` when that is the interpreter running now (short commands to copy), else
    the interpreter's full path."""
    found = shutil.which("python")
    same = found is not None and Path(found).resolve() == Path(sys.executable).resolve()
    return "python" if same else sys.executable


def worker_line(job: Job) -> str:
    """The worker's command line, with its extra environment, run from the repository."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in job.env.items())
    worker = shlex.join([python_name(), "-m", "conformance.worker", *job.arguments()])
    return (f"{env} " if env else "") + worker


def rerun_worker(job: Job) -> str:
    """The shell command that reruns this worker alone, exactly as the runner ran it."""
    return f"cd {shlex.quote(str(ROOT))} && {worker_line(job)}"


def rerun_check(job: Job, running: dict[str, str]) -> str:
    """The ``python -m conformance`` command that reruns just one check of ``job``."""
    target = ["--adapter", job.backend] if job.adapter else ["--backend", job.backend]
    return shlex.join([python_name(), "-m", "conformance", *target, "--full",
                       "--device", running["device"], "--mode", running["mode"],
                       "--dtype", running["dtype"], "--cases", running["case"]])


def mem_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gib(n: float) -> str:
    """Bytes as MiB below 1 GiB, else GiB: ``412 MiB``, ``1.05 GiB``."""
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def exit_cause(code: int) -> str:
    """What an exit status means: ``killed by SIGSEGV (signal 11)``, ``exit status 1``."""
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "an unknown signal"
    hint = " — often the out-of-memory killer" if -code == signal.SIGKILL else ""
    return f"killed by {name} (signal {-code}{hint})"


class Progress:
    """A bar with counts on a terminal; sparse plain lines (a worker's start and end, every
    200 checks) when the output is a log."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.done, self.failed = total, 0, 0
        self.label, self.job_done, self.job_planned = "", 0, 0
        self.start = time.perf_counter()

    def begin(self, label: str) -> None:
        self.label, self.job_done, self.job_planned = label, 0, 0

    def planned(self, planned: int, estimate: int) -> None:
        """The worker's own count replaces the runner's estimate (devices only it sees)."""
        self.total += planned - estimate
        self.job_planned = planned
        if not self.tty:
            self._line(f"  {self.label}: {planned} checks")

    def advance(self, failed: bool, what: str = "") -> None:
        self.done += 1
        self.job_done += 1
        self.failed += failed
        if self.tty:
            self._bar(what)
        elif self.job_done % 200 == 0:
            self._line(f"  {self.label}: {self.job_done}/{self.job_planned}, "
                       f"{self.failed} failed so far")

    def show(self, what: str) -> None:
        """Name the check under way (on a terminal: compiled checks take seconds each)."""
        if self.tty:
            self._bar(what)

    def note(self, text: str) -> None:
        """A line of its own, also on a terminal (where the bar is then redrawn)."""
        if self.tty:
            self.stream.write("\r\x1b[K")
        self._line(f"  {self.label}: {text}")

    def end(self, summary: str) -> None:
        self.note(summary)

    def _bar(self, what: str) -> None:
        width = 24
        filled = width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (width - filled)}] "
                          f"{self.done}/{self.total} · {self.failed} failed · "
                          f"{elapsed:.0f} s · {self.label} {what}"[:160])
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


@dataclass
class _State:
    """What a worker has said so far."""

    rows: list[dict] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    running: dict[str, str] | None = None
    noise: deque = field(default_factory=lambda: deque(maxlen=STDERR_LINES))


def _pump(stream: IO[str], lines: queue.Queue) -> None:
    """Copy a pipe's lines into a queue (``None`` at its end), so the runner can wait with a
    timeout and notice a worker that died or hangs."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _reap(pid: int, block: bool) -> tuple[int, int] | None:
    """``(exit code, peak RSS in bytes)`` of an exited worker, None while it runs.
    ``os.wait4`` gives this child's own peak, where ``getrusage`` would give the largest
    of all children so far."""
    done, status, usage = os.wait4(pid, 0 if block else os.WNOHANG)
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024


def _handle(message: dict, state: _State, progress: Progress, estimate: int) -> None:
    if "planned" in message:
        state.meta.update(planned=message["planned"], full=message.get("full", 0),
                          devices=message["devices"], absent=message["absent"])
        progress.planned(message["planned"], estimate)
    elif "setup_error" in message:
        state.meta["setup_error"] = message["setup_error"]
    elif "running" in message:
        state.running = message["running"]
        progress.show(f"{state.running['mode']} {state.running['dtype']}")
    else:
        state.rows.append(message)
        state.running = None
        progress.advance(message.get("status") == "failed",
                         f"{message.get('mode', '')} {message.get('dtype', '')}")


def _read(proc: subprocess.Popen, state: _State, progress: Progress, estimate: int,
          stall_timeout: float) -> tuple[int, int, bool]:
    """Read the worker's lines until it exits; kill it after ``stall_timeout`` seconds
    without a line. Returns (exit code, peak RSS, stalled)."""
    lines: queue.Queue = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    last, exited, stalled = time.monotonic(), None, False
    exit_seen = 0.0
    while True:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line:
            last = time.monotonic()
            _dispatch(line, state, progress, estimate)
            continue
        if not exited:
            exited = _reap(proc.pid, block=False)
            exit_seen = time.monotonic()
        # A grandchild (a compiler's helper) may hold the pipe open after the worker exits:
        # stop once the worker is gone and its last lines had two seconds to arrive.
        if exited and time.monotonic() - max(last, exit_seen) > 2:
            break
        if not exited and time.monotonic() - last > stall_timeout:
            proc.kill()
            stalled = True
            break
    code, rss = exited or _reap(proc.pid, block=True)
    proc.returncode = code  # reaped here (os.wait4), not by Popen
    return code, rss, stalled


def _dispatch(line: str, state: _State, progress: Progress, estimate: int) -> None:
    """One line of the worker's stdout: a JSON message, or a stray print of a library."""
    try:
        message = json.loads(line)
    except ValueError:
        state.noise.append(line.rstrip())
        return
    if isinstance(message, dict):
        _handle(message, state, progress, estimate)


def _tail(stderr: IO[bytes], noise: deque) -> str:
    """The last lines the worker wrote (its stderr, then stray stdout lines)."""
    stderr.seek(0)
    lines = [ln for ln in stderr.read().decode(errors="replace").splitlines() if ln.strip()]
    return "\n".join([*lines[-STDERR_LINES:], *noise][-STDERR_LINES:])


def death_cause(code: int, stalled: bool, stall_timeout: float, meta: dict[str, Any],
                done: int) -> str | None:
    """Why a worker did not deliver its checks, or None when it did."""
    planned = meta.get("planned")
    if stalled:
        return f"no output for {stall_timeout:.0f} s: killed"
    if code != 0:
        return exit_cause(code)
    if "setup_error" in meta:
        return None
    if planned is None:
        return "exit status 0 without reporting its plan"
    if done < planned:
        return "exit status 0 before reporting all its checks"
    return None


def death_row(job: Job, state: _State, cause: str, stderr: str,
              memory: int | None) -> dict[str, Any]:
    """The failure row of a dead worker: the check it died in (where known), its cause,
    its last stderr lines and the commands that rerun it alone."""
    planned = state.meta.get("planned")
    done = len(state.rows)
    reason = f"worker died: {cause}"
    running = state.running
    if running:
        reason += (f", in {running['device']}/{running['mode']}/{running['dtype']} "
                   f"{running['case']}")
    reason += f", after {done} of {planned if planned is not None else '?'} checks"
    if memory is not None:
        reason += f"; {gib(memory)} of memory was available when it started"
    rerun = [rerun_worker(job)] + ([rerun_check(job, running)] if running else [])
    name = state.rows[0]["backend"] if state.rows else job.backend
    where = running or {"device": ",".join(job.devices), "mode": ",".join(job.modes),
                        "dtype": "-", "case": "(worker)"}
    return {"backend": name, **where, "status": "failed", "worst": "inf", "where": "worker",
            "reason": reason, "stderr": stderr, "rerun": rerun}


def run_job(job: Job, progress: Progress, estimate: int = 0,
            stall_timeout: float = 1800.0) -> tuple[list[dict], dict[str, Any]]:
    """Run one worker to its end; its result rows (a dead worker's failure row among them)
    and its meta (seconds, peak RSS, devices, planned and full counts, crash cause)."""
    env = dict(os.environ, **job.env, PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "backends"), os.environ.get("PYTHONPATH", "")]))
    memory = mem_available()
    state = _State()
    progress.begin(job.label())
    if memory is not None and memory < LOW_MEMORY:
        progress.note(f"only {gib(memory)} of memory available; a worker can need 1 GiB "
                      "(TensorFlow) and may be killed")
    start = time.perf_counter()
    # stderr to a file, not a pipe: a worker's warnings must never block it.
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(job.command(), stdout=subprocess.PIPE, stderr=stderr,
                                text=True, env=env, cwd=ROOT)
        code, rss, stalled = _read(proc, state, progress, estimate, stall_timeout)
        cause = death_cause(code, stalled, stall_timeout, state.meta, len(state.rows))
        if cause:
            row = death_row(job, state, cause, _tail(stderr, state.noise), memory)
            state.rows.append(row)
            state.meta["crash"] = row["reason"]
            progress.failed += 1
    meta = state.meta
    meta.update(seconds=round(time.perf_counter() - start, 1), peak_rss=rss,
                mem_available=memory)
    failed = sum(r.get("status") == "failed" for r in state.rows)
    done = len(state.rows) - bool(cause)
    progress.end(f"{done}/{meta.get('planned', '?')} checks, {failed} failed, "
                 f"{meta['seconds']:.0f} s, peak RSS {gib(rss)}"
                 + (f" — worker died: {cause}" if cause else ""))
    return state.rows, meta
