"""Memory and CPU of the Spark side of a bench: the Python driver, its JVM, the Python workers.

The driver's own high-water mark is `ru_maxrss`; the JVM's is `VmHWM` in /proc (the kernel's
peak RSS of that process). Python workers come and go, so their peak is sampled while a query runs
(as PSS, since forked workers share pages).
CPU seconds of the whole process tree tell what a run cost even when other work on a shared
machine stretched its wall time.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from dataclasses import dataclass, field
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


CPU_KINDS = ("driver", "jvm", "python workers", "other python", "broker")


def _kind(proc: psutil.Process, broker_pid: int | None) -> str | None:
    """Which part of the Spark side a descendant is (None: not ours to count)."""
    if proc.pid == broker_pid:
        return "broker"
    if proc.name() == "java":
        return "jvm"
    cmdline = " ".join(proc.cmdline())
    if "python" not in proc.name() and "python" not in cmdline:
        return None  # e.g. the spark-submit shell wrapper
    # `pyspark.daemon pyspark.worker` runs tasks (the source's read on the executors); other
    # Python processes plan: the streaming source runner, plan/create/lookup data source.
    return "python workers" if "pyspark.worker" in cmdline.split() else "other python"


def cpu_by_process(broker_pid: int | None = None) -> dict[str, float]:
    """CPU seconds used so far by this process and its descendants, by kind (CPU_KINDS).

    A descendant's reaped children count through its `children_*` times (the worker daemon
    reaps its workers); this process's own reaped children (earlier bench stages) do not.
    """
    out = dict.fromkeys(CPU_KINDS, 0.0)
    me = psutil.Process()
    times = me.cpu_times()
    out["driver"] = times.user + times.system
    with contextlib.suppress(psutil.Error):
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kind = _kind(child, broker_pid)
                if kind is None:
                    continue
                t = child.cpu_times()
                out[kind] += t.user + t.system
                if kind != "jvm":  # the JVM reaps nothing we count elsewhere
                    out[kind] += t.children_user + t.children_system
    if broker_pid is not None and out["broker"] == 0.0:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(broker_pid).cpu_times()
            out["broker"] = t.user + t.system
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: max(after.get(k, 0.0) - before.get(k, 0.0), 0.0) for k in CPU_KINDS}


def spark_cpu(delta: dict[str, float]) -> float:
    """The Spark side's CPU seconds in a delta: everything but the broker."""
    return sum(v for k, v in delta.items() if k != "broker")


JVM_THREAD_GROUPS = ("executor tasks", "stream execution", "JIT compilers", "GC", "other")


def jvm_thread_cpu() -> dict[str, float]:
    """CPU seconds so far of the Spark JVM's threads, grouped: tasks, the streaming queries'
    driver threads (each micro-batch's planning and commits), JIT, GC, the rest.

    Tells the JVM's own overheads (compiling generated code, collecting garbage) and the fixed
    per-batch work from the work the tasks do. Linux only (/proc/<pid>/task); empty elsewhere.
    """
    out = dict.fromkeys(JVM_THREAD_GROUPS, 0.0)
    jvm = jvm_process()
    if jvm is None:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{jvm.pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            stat = Path(f"/proc/{jvm.pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if name.startswith("Executor task"):
            group = "executor tasks"
        elif name.startswith("stream executio"):  # comm is cut at 15 characters
            group = "stream execution"
        elif "CompilerThre" in name:
            group = "JIT compilers"
        elif name.startswith(("GC Thread", "G1 ", "VM Thread")):
            group = "GC"
        else:
            group = "other"
        out[group] += seconds
    return out


def broker_process() -> psutil.Process | None:
    """The embedded broker (tansu) this interpreter started, if it is our descendant."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name().startswith("tansu"):
                    return child
    return None


CPU_SHARES = ("simulator", "broker", "JVM: executor tasks", "JVM: stream execution",
              "JVM: JIT compilers", "JVM: GC", "JVM: other", "python workers", "other python",
              "driver")


@dataclass
class CpuSpan:
    """CPU seconds by share (`CPU_SHARES`) over `wall_s` seconds of a load run."""

    wall_s: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.cpu.values())

    def cores(self, share: str | None = None) -> float:
        """Average cores busy over the span: all shares, or one."""
        used = self.total if share is None else self.cpu.get(share, 0.0)
        return used / self.wall_s if self.wall_s > 0 else 0.0


class CpuMeter:
    """Where a paced load run's CPU goes: the simulator, the broker and the Spark side.

    `start()` before the simulator process starts, `stop()` after it has exited and been
    reaped: its CPU is then this process's reaped-children time (`RUSAGE_CHILDREN`), which no
    other child adds to during a run. The JVM's CPU is split by thread group
    (`jvm_thread_cpu`); the driver is this Python process, the bench's own polling included.
    Linux only for the JVM's split (its total is psutil's everywhere).
    """

    def __init__(self) -> None:
        broker = broker_process()
        self.broker_pid = broker.pid if broker is not None else None
        self._start: tuple[float, dict[str, float]] | None = None

    def _mark(self) -> tuple[float, dict[str, float]]:
        by_process = cpu_by_process(self.broker_pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = {"simulator": children.ru_utime + children.ru_stime,
               "broker": by_process["broker"], "python workers": by_process["python workers"],
               "other python": by_process["other python"], "driver": by_process["driver"]}
        threads = jvm_thread_cpu()
        for group in JVM_THREAD_GROUPS:
            out[f"JVM: {group}"] = threads.get(group, 0.0)
        if not threads:  # no /proc: the JVM's total as "other"
            out["JVM: other"] = by_process["jvm"]
        return time.monotonic(), out

    def start(self) -> None:
        self._start = self._mark()

    def stop(self) -> CpuSpan:
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        (t0, before), (t1, after) = self._start, self._mark()
        return CpuSpan(t1 - t0, {k: max(after[k] - before.get(k, 0.0), 0.0) for k in CPU_SHARES})


CPU_COLUMNS = ("wall s", *CPU_SHARES, "all", "CPU s per 1,000 events")


def cpu_caption(until: str, nproc: object) -> str:
    """The Markdown line above a CPU table; `until`: when the run's span ended."""
    return (f"CPU by process from the simulator's start until {until}, as average cores busy "
            f"(the machine has {nproc}); the driver column includes the bench's own polling:")


def cpu_cells(span: CpuSpan | None, events: int) -> tuple[str, ...]:
    """A CPU table row's cells (`CPU_COLUMNS`): each share as average cores busy."""
    if span is None:
        return ("-",) * len(CPU_COLUMNS)
    per_k = f"{span.total / events * 1000:.2f}" if events else "-"
    return (f"{span.wall_s:.0f}", *(f"{span.cores(s):.2f}" for s in CPU_SHARES),
            f"{span.cores():.2f}", per_k)


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
    python_workers: int | None  # sampled peak of all Python workers together (PSS)


class WorkerSampler:
    """Samples the summed memory of the JVM's Python workers in a thread (`with` block).

    Workers are forked from one daemon and share pages, so their RSS would count those pages
    once per worker: PSS (each shared page split among its sharers) is summed where the platform
    has it, RSS elsewhere.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
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

    @staticmethod
    def footprint(pid: int) -> int:
        """PSS from /proc/<pid>/smaps_rollup (cheap, unlike full smaps), else RSS."""
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(pid).memory_info().rss)
        return 0

    def _run(self) -> None:
        # Kept cheap (the bench's own CPU would show up as the driver's): the JVM is looked up
        # until found, then only its descendants are listed, twice a second.
        jvm: psutil.Process | None = None
        while not self._stop.is_set():
            if jvm is None or not jvm.is_running():
                jvm = jvm_process()
            if jvm is not None:
                with contextlib.suppress(psutil.Error):
                    total = sum(self.footprint(w.pid) for w in jvm.children(recursive=True))
                    self.peak = max(self.peak or 0, total)
            self._stop.wait(self.interval_s)


def spark_memory(sampler: WorkerSampler | None) -> SparkMemory:
    """The driver's ru_maxrss, the JVM's VmHWM and the workers' sampled peak, now."""
    jvm = jvm_process()
    return SparkMemory(driver_python=peak_rss_self(),
                       jvm=vm_hwm_bytes(jvm.pid) if jvm is not None else None,
                       python_workers=sampler.peak if sampler is not None else None)
