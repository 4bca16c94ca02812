"""A task's peak memory and CPU time, measured in the worker process that runs it.

Peak RSS: the kernel's own high-water mark (VmHWM in /proc/self/status), reset to the current RSS when the task
starts by writing "5" to /proc/self/clear_refs (Linux >= 4.0). That is exact (a spike between two samples is
never missed) and costs nothing while the task runs; a reused Ray worker's earlier tasks do not count. Where the
reset is refused (another OS, a locked-down /proc), a daemon thread samples VmRSS every SAMPLE_S seconds instead
and the figure says so (`peak_rss_sampled`). `resource.getrusage`'s ru_maxrss cannot be reset: on a reused
worker it is the largest task so far, not this one. CPU: `time.process_time()` (user + system of every thread
of the worker) over the task.
"""

from __future__ import annotations

import threading
import time

SAMPLE_S = 0.05
_started: dict | None = None


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _sample(state: dict, stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_S):
        state["peak_kib"] = max(state["peak_kib"], _status_kib("VmRSS"))


def start() -> None:
    """Called in the worker as a task starts: from here on, its peak RSS and CPU seconds are the task's."""
    global _started
    stop()
    state = {"cpu": time.process_time(), "peak_kib": _status_kib("VmRSS"), "sampled": False, "stop": None}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        state["sampled"], state["stop"] = True, threading.Event()
        threading.Thread(target=_sample, args=(state, state["stop"]), daemon=True).start()
    _started = state


def stop() -> None:
    global _started
    if _started and _started["stop"] is not None:
        _started["stop"].set()
    _started = None


def reading() -> dict:
    """The task's peak RSS (MiB) and CPU seconds so far; {} outside a metered task (a task function called
    directly, as the tests do)."""
    if _started is None:
        return {}
    if _started["sampled"]:
        peak = max(_started["peak_kib"], _status_kib("VmRSS"))
    else:
        peak = _status_kib("VmHWM")
    out = {"peak_rss_mib": round(peak / 1024, 1), "cpu_seconds": round(time.process_time() - _started["cpu"], 3)}
    return out | ({"peak_rss_sampled": True} if _started["sampled"] else {})
