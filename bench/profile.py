"""py-spy: sample the stack's processes during a load window; top functions by CPU samples."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def available() -> bool:
    return bool(py_spy())


def py_spy() -> str | None:
    local = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pids: dict[str, int], seconds: float, outdir: Path) -> dict[str, tuple[subprocess.Popen, Path]]:
    """One ``py-spy record --format raw --subprocesses --gil`` per process: only samples of threads
    holding the GIL, i.e. running Python, so waits on sockets do not count as CPU."""
    outdir.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, pid in pids.items():
        out = outdir / f"{name}.txt"
        out.unlink(missing_ok=True)
        argv = [py_spy(), "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", "200", "--gil"]
        argv += ["--duration", str(max(1, round(seconds))), "--nonblocking", "-o", str(out)]
        running[name] = (
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
            out,
        )
    return running


def finish(running: dict[str, tuple[subprocess.Popen, Path]], top: int = 8) -> dict[str, dict]:
    summary = {}
    for name, (proc, out) in running.items():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        summary[name] = summarize(out, top) if out.exists() else {"error": "py-spy wrote nothing"}
    return summary


def shares(path: Path, focus: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, float]]:
    """Inclusive share of the samples for each ``(what, label prefixes)``: the stacks in which any
    frame's label starts with one of the prefixes (each stack counted once per item)."""
    counts, total = Counter(), 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        labels = {_label(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))}
        if not labels:
            continue
        total += int(count)
        for what, prefixes in focus:
            if any(label.startswith(prefixes) for label in labels):
                counts[what] += int(count)
    return [(what, round(100 * counts[what] / max(total, 1), 1)) for what, _ in focus]


def _label(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()[:90]
    path = match["file"]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def _package(label: str) -> str:
    """The top-level package of a frame label: 'celery', 'django', 'psycopg', 'marketplace', ..."""
    path = label.rpartition(" (")[2].rstrip(")")
    head = path.split("/", 1)[0]
    if head.startswith("<frozen "):
        return head.removeprefix("<frozen ").rstrip(">")
    return head.removesuffix(".py") if head and not head.startswith("<") else "(generated code)"


def summarize(path: Path, top: int) -> dict:
    """Self samples by leaf function, inclusive samples by function (each counted once per stack)."""
    own, inclusive, packages, total = Counter(), Counter(), Counter(), 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_label(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        packages[_package(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    project = Counter(
        {
            f: n
            for f, n in inclusive.items()
            if any(p in f for p in ("marketplace/", "orders/", "notifications/", "segmentation/"))
        }
    )
    return {
        "samples": total,
        "self": [(f, round(100 * n / max(total, 1), 1)) for f, n in own.most_common(top)],
        "self_by_package": [(p, round(100 * n / max(total, 1), 1)) for p, n in packages.most_common(top)],
        "inclusive_project": [(f, round(100 * n / max(total, 1), 1)) for f, n in project.most_common(top)],
    }
