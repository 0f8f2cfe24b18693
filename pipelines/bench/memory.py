"""Memory and CPU of the Spark side of a bench: the Python driver, its JVM, the Python workers.

The driver's own high-water mark is `ru_maxrss`; the JVM's is `VmHWM` in /proc (the kernel's
peak RSS of that process). Python workers come and go, so their peak is sampled while a query runs.
CPU seconds of the whole process tree tell what a run cost even when other work on a shared
machine stretched its wall time.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipelines.bench.stages import peak_rss_self


def jvm_process() -> psutil.Process | None:
    """The `java` process this interpreter started for Spark (a child or grandchild)."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "java" or Path(child.exe()).name == "java":
                    return child
    return None


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and all its descendants (JVM, Python workers).

    A descendant's reaped children count through its `children_*` times; this process's own
    reaped children (earlier bench stages) are left out.
    """
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system
    with contextlib.suppress(psutil.Error):
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak RSS of `pid` from /proc/<pid>/status (None where there is no procfs)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class SparkMemory:
    """Peak memory of the Spark side, in bytes (None: could not be read on this platform)."""

    driver_python: int
    jvm: int | None
    python_workers: int | None  # sampled peak of all Python workers together


class WorkerSampler:
    """Samples the summed RSS of the JVM's Python workers in a thread (`with` block)."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def __enter__(self) -> WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            jvm = jvm_process()
            if jvm is not None:
                total = 0
                with contextlib.suppress(psutil.Error):
                    for worker in jvm.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            total += worker.memory_info().rss
                self.peak = max(self.peak or 0, total)
            self._stop.wait(self.interval_s)


def spark_memory(sampler: WorkerSampler | None) -> SparkMemory:
    """The driver's ru_maxrss, the JVM's VmHWM and the workers' sampled peak, now."""
    jvm = jvm_process()
    return SparkMemory(driver_python=peak_rss_self(),
                       jvm=vm_hwm_bytes(jvm.pid) if jvm is not None else None,
                       python_workers=sampler.peak if sampler is not None else None)
