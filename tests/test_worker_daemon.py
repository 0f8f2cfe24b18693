"""The Python worker daemon drops Spark's jar and duplicate zips from the workers' sys.path."""

from __future__ import annotations

import sys
import zipimport

import pytest
from pyspark.sql import SparkSession

from pipelines.worker_daemon import drop_redundant_archives


def test_workers_import_pyspark_from_the_install_not_from_archives(spark: SparkSession) -> None:
    def _worker_view(_: object) -> list[tuple[list[str], list[str], str]]:
        """Runs in a worker (a nested function: cloudpickle ships it by value)."""
        import importlib
        import sys
        import zipimport

        import pyspark

        importlib.invalidate_caches()
        zips = [k for k, v in sys.path_importer_cache.items()
                if isinstance(v, zipimport.zipimporter)]
        archives = [p for p in sys.path if p.endswith((".jar", ".zip")) and "pyspark" in p]
        return [(zips, archives, pyspark.__file__)]

    [(zips, archives, pyspark_file)] = (spark.sparkContext.parallelize([0], 1)
                                        .flatMap(_worker_view).collect())
    assert not [z for z in zips if "pyspark" in z], zips
    assert archives == []
    assert ".zip" not in pyspark_file and pyspark_file.endswith("__init__.py")


def test_archives_that_are_the_only_copy_stay(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    jar = str(tmp_path / "spark-core_2.13.jar")
    spark_zip = str(tmp_path / "lib" / "pyspark.zip")
    user_zip = str(tmp_path / "deps.zip")
    monkeypatch.setattr(sys, "path", [jar, spark_zip, user_zip, str(tmp_path / "empty")])
    monkeypatch.setattr(sys, "path_importer_cache", {})
    # No plain-directory pyspark on this path: Spark's zip is the only copy and must stay.
    assert drop_redundant_archives() == [jar]
    assert sys.path == [spark_zip, user_zip, str(tmp_path / "empty")]


def test_spark_zips_go_where_pyspark_and_py4j_are_installed(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site-packages"
    for package in ("pyspark", "py4j"):
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text("")
    spark_zip, py4j_zip = str(tmp_path / "pyspark.zip"), str(tmp_path / "py4j-0.10.9.9-src.zip")
    monkeypatch.setattr(sys, "path", [spark_zip, py4j_zip, str(site)])
    cached = object.__new__(zipimport.zipimporter)
    monkeypatch.setattr(sys, "path_importer_cache", {spark_zip: cached})
    assert drop_redundant_archives() == [spark_zip, py4j_zip]
    assert sys.path == [str(site)]
    assert sys.path_importer_cache == {}


def test_workers_collect_young_garbage_after_each_task(spark: SparkSession) -> None:
    """In a real worker: pyspark.daemon's `gc` collects the young generations only, what the
    daemon imported is frozen, and a task's cyclic garbage is still collected."""
    def _worker_gc(_: object) -> list[tuple[str, int, int]]:
        import gc

        import pyspark.daemon

        class Cycle:
            pass

        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        del a, b
        return [(type(pyspark.daemon.gc).__name__, gc.get_freeze_count(),
                 pyspark.daemon.gc.collect())]

    [(name, frozen, collected)] = (spark.sparkContext.parallelize([0], 1)
                                   .flatMap(_worker_gc).collect())
    assert name == "YoungGenerationGc"
    assert frozen > 1000
    assert collected >= 2


def test_young_generation_gc_is_the_real_gc_but_for_collect() -> None:
    import gc

    from pipelines.worker_daemon import YoungGenerationGc

    shim = YoungGenerationGc()
    assert shim.isenabled() == gc.isenabled() and shim.get_threshold() == gc.get_threshold()
    before = gc.get_count()
    shim.collect()
    assert gc.get_count()[0] <= before[0]
