"""PySpark's Python worker daemon, without the archives Spark puts on the workers' `sys.path`.

Why: Spark starts its Python workers with `PYTHONPATH` holding `pyspark.zip`, the py4j zip
and the spark-core jar, and every task's `setup_spark_files` calls
`importlib.invalidate_caches()`. On Python 3.11 that makes every cached zip importer re-read its
archive's directory: the 37 MB spark-core jar (5,000 entries, twice) and `pyspark.zip` (once per
subpackage imported from it), ~90 ms per task, measured. Spark's Python data sources (the Kafka
and Delta readers here) and the state processors run one task per partition per micro-batch,
so the fixed cost adds up to a large share of a small batch.

A jar never holds Python code, and the two zips duplicate the pyspark and py4j installed in
this environment, so the daemon drops them from `sys.path` before importing pyspark, then
hands over to `pyspark.daemon` (which picks the worker module from `sys.argv` as before).
Archives that are the only copy of their package (a cluster's `--py-files`) stay.
Enabled by `build_spark` through `spark.python.daemon.module`.

Second: a reused worker runs a full `gc.collect()` after every task (pyspark/daemon.py), which
walks every object the worker holds: pyspark, pyarrow, pandas and the job's modules, imported
once and kept for the worker's life. py-spy on the workers of `bench resolve` at 10,000 lessons
found 23-32% of their samples in that call, about a quarter of a core on this 2-core host
(docs/BENCHMARKS.md). The daemon's `gc` is swapped for `YoungGenerationGc`, which collects
the young generations only: a task's cyclic garbage is young unless it outlived many
collections during the task, and that is left to Python's own full collections, which still
run by their thresholds. What the daemon imported before forking is frozen (`gc.freeze`), so
those collections skip it in every worker.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import zipimport
from typing import Any

_SPARK_ARCHIVES = ("pyspark.zip", "py4j-")


def _installed_outside_archives(package: str) -> bool:
    """Whether `package` is importable from a plain directory on `sys.path`."""
    for entry in sys.path:
        if entry.endswith((".zip", ".jar", ".egg")):
            continue
        if os.path.isfile(os.path.join(entry or ".", package, "__init__.py")):
            return True
    return False


def drop_redundant_archives() -> list[str]:
    """Remove jars, and Spark's own zips where pyspark and py4j are installed, from
    `sys.path` and the importer cache; returns what was removed."""
    spark_zips = [p for p in sys.path
                  if os.path.basename(p).startswith(_SPARK_ARCHIVES) and p.endswith(".zip")]
    installed = _installed_outside_archives("pyspark") and _installed_outside_archives("py4j")
    drop = [p for p in sys.path if p.endswith(".jar") or (installed and p in spark_zips)]
    sys.path[:] = [p for p in sys.path if p not in drop]
    for key, finder in list(sys.path_importer_cache.items()):
        if isinstance(finder, zipimport.zipimporter) and key.startswith(tuple(drop)):
            del sys.path_importer_cache[key]
    importlib.invalidate_caches()
    return drop


class YoungGenerationGc:
    """`gc` for pyspark.daemon: `collect()` without an argument collects generations 0 and 1
    instead of all three (see the module docstring); everything else is the real `gc`."""

    @staticmethod
    def collect(generation: int = 1) -> int:
        return gc.collect(generation)

    def __getattr__(self, name: str) -> Any:
        return getattr(gc, name)


if __name__ == "__main__":
    drop_redundant_archives()
    import pyspark.daemon

    pyspark.daemon.gc = YoungGenerationGc()  # type: ignore[assignment]
    gc.freeze()
    pyspark.daemon.manager()
