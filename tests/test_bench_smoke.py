"""Smoke test of `lakehouse bench bronze`: every stage runs and counts right on a tiny input.

Rates are only checked to be positive: timing thresholds would fail on a busy machine and say
nothing about correctness. The bench starts (and stops) its own broker on a free port; the
session's SparkSession is reused so the test pays no extra JVM start-up.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from rich.console import Console

from pipelines.bench.bronze import reproduce_command, run_bronze_bench
from pipelines.bench.events import av_events
from pipelines.bench.stages import BRONZE_ARROW_SCHEMA, bronze_batch
from pipelines.config import load_settings


def test_av_events_are_contract_shaped() -> None:
    """Unique ids, ~400 bytes, the classroom as record key: what the bench claims to produce."""
    import orjson

    pairs = list(av_events(500))
    events = [orjson.loads(value) for _, value in pairs]
    assert len({e["event_id"] for e in events}) == 500
    assert all(e["event_type"] == "av.quality" and e["schema_version"] == 1 for e in events)
    assert all(key.decode() == e["classroom_id"] for (key, _), e in zip(pairs, events, strict=True))
    assert {"direction", "media", "bitrate_kbps", "packet_loss_pct", "jitter_ms", "rtt_ms",
            "freeze_count"} <= set(events[0]["payload"])
    sizes = [len(value) for _, value in pairs]
    assert 350 <= sum(sizes) / len(sizes) <= 500


def test_plain_loop_batch_keeps_non_utf8_bytes() -> None:
    """The plain loop's bronze columns follow the bronze contract for bad bytes, too."""
    table = bronze_batch(["t", "t"], [0, 0], [0, 1], [1_767_225_600_000] * 2, [0, 0],
                         [b"k", None], [b'{"a":1}', b"\xff\xfe"])
    assert table.schema == BRONZE_ARROW_SCHEMA
    assert table.column("value").to_pylist() == ['{"a":1}', None]
    assert table.column("value_raw").to_pylist() == [None, b"\xff\xfe"]
    assert table.column("key").to_pylist() == ["k", None]
    assert str(table.column("ingest_date")[0]) == "2026-01-01"
    assert table.column("kafka_timestamp").type == pa.timestamp("us", tz="UTC")


def test_reproduce_command_keeps_settings_not_secrets() -> None:
    command = reproduce_command(300_000, {
        "LAKEHOUSE__SPARK__EXTRA_CONF": "{spark.driver.extraJavaOptions: -XX:+UseParallelGC}",
        "LAKEHOUSE_ROOT": "/somewhere", "LAKEHOUSE__KAFKA__SASL_PASSWORD": "hunter2",
        "PATH": "/usr/bin"})
    assert command == ("LAKEHOUSE__SPARK__EXTRA_CONF='{spark.driver.extraJavaOptions: "
                       "-XX:+UseParallelGC}' lakehouse bench bronze --events 300000")


@pytest.mark.e2e
def test_bench_bronze_counts_every_record(spark: SparkSession, tmp_path: Path) -> None:
    events = 3000
    settings = load_settings("local", environ={**os.environ,
                                               "LAKEHOUSE_ROOT": str(tmp_path / "root")})
    output = tmp_path / "BENCHMARKS.md"
    out = io.StringIO()
    report = run_bronze_bench(settings, events=events, output=output,
                              console=Console(file=out, width=160), spark=spark,
                              trigger_caps=(1000,), repeat=1, profile=True)

    for stage in (report.produce, report.librdkafka, report.kafka_python, report.plain):
        assert stage.records == events, stage.name
        assert stage.rate > 0 and stage.peak_rss_bytes, stage.name
    assert report.librdkafka.notes["payload_bytes"] == report.kafka_python.notes["payload_bytes"]
    assert isinstance(report.kafka_python.notes["crc32c_native"], bool)
    assert report.plain.notes["commits"] >= 1

    [bronze] = report.bronze
    assert bronze.rows == bronze.table_rows == events
    assert bronze.batches >= 3  # 3000 records at 1000 per trigger
    assert bronze.rate > 0 and bronze.wall_rate > 0
    assert bronze.cpu["jvm"] > 0 and bronze.cpu["python workers"] > 0
    assert sum(bronze.jvm_threads.values()) > 0
    assert report.memory.driver_python > 0

    assert report.profile is not None and report.profile.rows == events
    assert all(piece.seconds > 0 for piece in report.profile.pieces.values())
    assert report.source_read is not None and report.source_read.records == events

    text = output.read_text()
    assert text.startswith("# Benchmarks")
    assert f"lakehouse bench bronze --events {events}`" in text
    assert "bronze cap 1,000 / plain loop" in text
    assert "bench bronze" in out.getvalue()

    # The caller's session is left running; the bench's broker and work dir are gone.
    assert spark.range(3).count() == 3
    assert not Path(report.workdir).exists()
    host, _, port = report.bootstrap.rpartition(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1):
        pass


def test_bench_validate_measures_the_validation(spark: SparkSession, tmp_path: Path) -> None:
    """`bench validate`'s in-process measurement: every record validated, the same rejects as
    the Python contract validator, CPU read from the JVM; and its Markdown."""
    from pipelines.bench.validate import _append_markdown, _ratios, measure, simulated_records
    from schemas.contract import validate_raw

    settings = load_settings("local", environ=os.environ)
    values = simulated_records(settings, 3000)
    run = measure(spark, values, reps=3)
    assert run.records == 3000
    assert run.rejects == sum(1 for v in values if validate_raw(v)) > 0
    assert run.wall_s > 0 and run.jvm_cpu_s > 0

    assert run.rows_out == 3000

    # The fast-path jobs' input plans over the same records, both far fewer rows than they
    # read. The resolver keeps more than the help job (heartbeats), unless the help job
    # relays the resolver's rows (its requests come on top).
    from pipelines.config import ResolverEvidence

    relay = settings.model_copy(update={"resolver": settings.resolver.model_copy(
        update={"evidence": ResolverEvidence.RELAY})})
    help_run = measure(spark, values, reps=3, plan="help", settings=relay)
    help_alone = measure(spark, values, reps=3, plan="help", settings=settings)
    resolver_run = measure(spark, values, reps=3, plan="resolver", settings=settings)
    assert 0 < help_alone.rows_out < resolver_run.rows_out <= help_run.rows_out < 3000
    assert help_run.jvm_cpu_s > 0 and resolver_run.plan == "resolver"

    runs = [run, dataclasses.replace(run, variant="no-huge-jit", jvm_cpu_s=run.jvm_cpu_s * 2)]
    assert _ratios(runs) == [0.5]
    output = tmp_path / "BENCHMARKS.md"
    _append_markdown(output, 3000, 3, runs, _ratios(runs))
    text = output.read_text()
    assert "lakehouse bench validate --records 3000 --reps 3 --rounds 1 --plan contract" in text
    assert "default / no-huge-jit, per round: 0.50x" in text


def test_bench_help_phase_medians() -> None:
    """The per-phase medians come from data batches only; sink phases where a batch had them."""
    from pipelines.bench.help import HelpBenchReport, LoadRun, batch_phases, phase_table

    progress = [
        {"batchId": 0, "numInputRows": 0, "durationMs": {"addBatch": 9000}},  # idle: ignored
        {"batchId": 1, "numInputRows": 5, "durationMs": {"addBatch": 1000, "walCommit": 20}},
        {"batchId": 2, "numInputRows": 7, "durationMs": {"addBatch": 3000, "walCommit": 40}},
        {"batchId": 3, "numInputRows": 9, "durationMs": {"addBatch": 2000, "walCommit": 30}},
    ]
    sink = {1: {"compute": 0.5}, 2: {"compute": 0.7, "kafka": 0.1, "delta": 0.3},
            3: {"compute": 0.6}}
    phases = batch_phases(progress, sink)
    assert phases == {"addBatch": 2.0, "walCommit": 0.03, "sink compute": 0.6,
                      "sink kafka": 0.1, "sink delta": 0.3}
    run = LoadRun(classrooms=200, engine="state", requests=1, tags=1, accuracy=1.0, latency={},
                  offered_rate=1.0, processed_rate=1.0, batch_ms=[1], lag_at_end_s=None,
                  state_rows=0, phases=phases)
    columns, rows = phase_table(HelpBenchReport("now", {}, {}, loads=[run]))
    assert dict(zip(columns, rows[0], strict=True))["addBatch"] == "2.00"
    assert dict(zip(columns, rows[0], strict=True))["latestOffset"] == "-"


def test_bench_help_splits_latency_by_how_the_tag_was_decided() -> None:
    from pipelines.bench.help import LOAD_COLUMNS, HelpBenchReport, LoadRun, load_rows

    latency = {"event_p50_ms": 4600.0, "event_p95_ms": 13100.0, "event_p99_ms": 16400.0,
               "early_tags": 913.0, "early_p50_ms": 4400.0, "early_p95_ms": 7500.0}
    run = LoadRun(classrooms=2000, engine="state", requests=913, tags=913, accuracy=1.0,
                  latency=latency, offered_rate=1.0, processed_rate=1.0, batch_ms=[1],
                  lag_at_end_s=None, state_rows=0)
    row = dict(zip(LOAD_COLUMNS, load_rows(HelpBenchReport("now", {}, {}, loads=[run]))[0],
                   strict=True))
    assert row["early tags: n, p50/p95"] == "913, 4.4 s / 7.5 s"
    assert row["window-closed tags: n, p50/p95"] == "0"


def test_bench_silver_rates_with_and_without_the_first_batch() -> None:
    """`bench silver` sums input rows over micro-batch durations per query, and also gives
    the rate after each query's first data batch (which pays the JVM's warm-up)."""
    from pipelines.bench.silver import stage_rate, steady_ratio

    progress = [
        {"query_name": "silver", "batch_id": 2, "input_rows": 2000, "batch_duration_ms": 1000},
        {"query_name": "silver", "batch_id": 0, "input_rows": 1000, "batch_duration_ms": 9000},
        {"query_name": "silver", "batch_id": 1, "input_rows": 0, "batch_duration_ms": 50},
        {"query_name": "silver", "batch_id": 3, "input_rows": 2000, "batch_duration_ms": 1000},
        {"query_name": "bronze", "batch_id": 0, "input_rows": 5000, "batch_duration_ms": 1000},
    ]
    silver, bronze = stage_rate(progress, "silver"), stage_rate(progress, "bronze")
    assert (silver.rows, silver.batches, silver.busy_s) == (5000, 3, 11.0)
    assert silver.rate == 5000 / 11.0 and silver.steady_rate == 2000.0
    assert bronze.rate == 5000.0 and bronze.steady_rate is None  # one batch: no steady rate
    assert steady_ratio(bronze, silver) is None
    assert steady_ratio(silver, silver) == 1.0


def test_bench_silver_markdown_says_whether_it_warmed_up(tmp_path: Path) -> None:
    from pipelines.bench.silver import SilverRun, StageRate, _append_markdown

    out = tmp_path / "bench.md"
    bronze, silver = StageRate("bronze", 100, 1.0, 1), StageRate("silver", 100, 4.0, 1)
    run = SilverRun(100, bronze, silver, [])
    _append_markdown(out, 5, 60, [run], warmup=False, notes=["warm-up failed: boom"])
    _append_markdown(out, 5, 60, [run])
    text = out.read_text()
    assert "lakehouse bench silver --classrooms 5 --duration 60 --no-warmup`" in text
    assert "lakehouse bench silver --classrooms 5 --duration 60`" in text
    assert "no warm-up run" in text and "after an unreported warm-up run" in text
    assert "- warm-up failed: boom" in text
    assert "**0.25** (goal" in text


def test_bench_silver_repeated_runs_report_each_ratio_and_their_median(tmp_path: Path) -> None:
    from pipelines.bench.silver import SilverRun, StageRate, _append_markdown

    bronze = StageRate("bronze", 1000, 1.0, 2)
    runs = [SilverRun(1000, bronze, StageRate("silver", 1000, busy, 1), [10, 12])
            for busy in (4.0, 5.0, 2.0)]
    assert [r.ratio for r in runs] == [0.25, 0.2, 0.5]
    out = tmp_path / "bench.md"
    _append_markdown(out, 5, 60, runs, jvm_peak=3 * 2**29)
    text = out.read_text()
    assert "--duration 60 --repeat 3`" in text
    assert "JVM peak RSS over the whole bench (warm-up included): 1,536 MB." in text
    assert "**0.25, 0.20, 0.50 (median 0.25)**" in text
    assert "| 3 | silver | 1,000 | 1 | 2.0 | 500 | - |" in text
    assert "Dedup state rows per silver batch (run 2): 2 batches" in text


def test_bench_resolve_splits_each_auto_resolution_into_its_segments() -> None:
    """Request -> tag -> first action -> the fixing action applied -> RESOLVED_AUTO, per case;
    cases that did not end RESOLVED_AUTO, or whose fix the truth did not record, are left out."""
    from datetime import UTC, datetime

    from pipelines.bench.resolve import SEGMENTS, resolution_segments

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    retry = [{"action_id": "a1", "issued_at_ms": 14_000, "applied_at_ms": 16_000},
             {"action_id": "a2", "issued_at_ms": 24_000, "applied_at_ms": 26_500}]
    truth = {
        "h1": {"actions": [{"action_id": "b1", "issued_at_ms": 13_000,
                            "applied_at_ms": 15_000}],
               "fixed_by_action_id": "b1", "fixed_at_ms": 15_000},
        "h2": {"actions": retry, "fixed_by_action_id": "a2", "fixed_at_ms": 26_500},
        "h3": {"actions": [], "fixed_by_action_id": None, "fixed_at_ms": None},
        "h4": {"actions": retry, "fixed_by_action_id": "a2", "fixed_at_ms": 26_500},
    }
    tags = [{"help_id": h, "request_time": at(10_000), "tagged_at": at(12_500)}
            for h in ("h1", "h2", "h3", "h4")]
    finals = [{"help_id": "h1", "state": "RESOLVED_AUTO", "transition_time": at(19_000)},
              {"help_id": "h2", "state": "RESOLVED_AUTO",  # naive: UTC
               "transition_time": at(30_000).replace(tzinfo=None)},
              {"help_id": "h3", "state": "RESOLVED_AUTO", "transition_time": at(19_000)},
              {"help_id": "h4", "state": "ESCALATED", "transition_time": at(40_000)}]
    segments = resolution_segments(truth, tags, finals)
    assert list(segments) == list(SEGMENTS)
    assert segments == {"request -> tag": [2.5, 2.5], "tag -> first action": [0.5, 1.5],
                        "fixing action -> applied": [2.0, 2.5],
                        "applied -> RESOLVED_AUTO": [4.0, 3.5]}


def test_bench_resolve_counts_escalations_by_reason_and_fixability() -> None:
    from pipelines.bench.resolve import ResolveRun, escalation_line, escalation_reasons

    truth = {"h1": {"fixable": True}, "h2": {"fixable": False}, "h3": {"fixable": False},
             "h4": {"fixable": True}}
    finals = [
        {"help_id": "h1", "state": "ESCALATED",
         "detail": "total timeout (60 s after the request) in CONFIRM"},
        {"help_id": "h2", "state": "ESCALATED", "detail": "not confirmed after 2 attempts"},
        {"help_id": "h3", "state": "ESCALATED", "detail": "not confirmed after 3 attempts"},
        {"help_id": "h4", "state": "RESOLVED_AUTO", "detail": "healthy after h4:1:x"},
        {"help_id": "h5", "state": "ESCALATED", "detail": None}]  # not in the truth
    got = escalation_reasons(truth, finals)
    assert got == {"fixable": {"total timeout": 1},
                   "not fixable": {"not confirmed after N attempts": 2, "?": 1}}
    run = ResolveRun(classrooms=10, report=None, segments={}, offered_rate=0.0,  # type: ignore[arg-type]
                     help_processed_rate=0.0, batch_s={}, drain_s=None, escalations=got)
    assert escalation_line(run) == ("- 10 lessons, escalations by reason: fixable: total "
                                    "timeout 1; not fixable: not confirmed after N attempts 2, "
                                    "? 1.")


def test_bench_resolve_rows() -> None:
    from pipelines.bench.memory import CpuSpan
    from pipelines.bench.resolve import (
        OUTCOME_COLUMNS,
        PHASE_COLUMNS,
        RUN_CPU_COLUMNS,
        SEGMENT_COLUMNS,
        ResolveBenchReport,
        ResolveRun,
        cpu_rows,
        outcome_rows,
        phase_rows,
        segment_rows,
    )
    from pipelines.demo_report import DemoReport

    report = DemoReport(
        classrooms=1000, duration_s=120, seed=7, produced=600_000, bronze_rows=0,
        silver_rows={}, rejects_by_reason={}, duplicates=0, dropped_by_watermark=0,
        help_requests=4, tagged=4, tag_accuracy=1.0, tag_scores={},
        outcomes={"RESOLVED_AUTO": 2, "ESCALATED": 1}, outcomes_by_tag={}, open_cases=1,
        fixable=3, fixable_resolved_auto=2, tag_latency_s=[2.0, 3.0, 4.0, 9.0],
        resolution_latency_s=[8.0, 12.0], outcome_problems=["h9: 0 final states"])
    run = ResolveRun(classrooms=1000, report=report,
                     segments={"request -> tag": [2.0, 3.0], "tag -> first action": [1.0, 1.0],
                               "fixing action -> applied": [2.0, 3.0],
                               "applied -> RESOLVED_AUTO": [3.0, 5.0]},
                     offered_rate=5000.0, help_processed_rate=4500.0,
                     batch_s={"help": [1.0, 2.0, 6.0], "resolver": []}, drain_s=None,
                     phases={"resolver": {"addBatch": 2.5}, "help": {}},
                     cpu=CpuSpan(100.0, {"simulator": 50.0, "broker": 20.0, "driver": 10.0}))
    bench = ResolveBenchReport("now", {}, {}, runs=[run])
    row = dict(zip(OUTCOME_COLUMNS, outcome_rows(bench)[0], strict=True))
    assert row["auto / self / escalated / open"] == "2 / 0 / 1 / 1"
    assert row["fixable auto-resolved"] == "2 of 3"
    assert row["ground-truth breaches"] == "1"
    assert row["request -> tag p50/p95"] == "3.0 s / 9.0 s"
    assert row["request -> RESOLVED_AUTO p50/p95/p99"] == "8.0 s / 12.0 s / 12.0 s"
    assert row["help batch median/max s"] == "2.0 / 6.0"
    assert row["resolver batch median/max s"] == "-"
    assert row["drain"] == "-"
    segments = dict(zip(SEGMENT_COLUMNS, segment_rows(bench)[0], strict=True))
    assert segments["RESOLVED_AUTO cases"] == "2"
    assert segments["applied -> RESOLVED_AUTO p50/p95"] == "3.0 s / 5.0 s"
    phases = [dict(zip(PHASE_COLUMNS, row, strict=True)) for row in phase_rows(bench)]
    assert [(p["query"], p["addBatch"], p["walCommit"]) for p in phases] == [
        ("help", "-", "-"), ("resolver", "2.50", "-")]
    cpu = dict(zip(RUN_CPU_COLUMNS, cpu_rows(bench)[0], strict=True))
    assert (cpu["wall s"], cpu["simulator"], cpu["broker"], cpu["JVM: GC"]) == (
        "100", "0.50", "0.20", "0.00")
    assert cpu["all"] == "0.80"
    assert cpu["CPU s per 1,000 events"] == "0.13"  # 80 CPU s over 600,000 events


def test_bench_resolve_markdown_names_the_command_that_reproduces_it(tmp_path: Path) -> None:
    from pipelines.bench.resolve import ResolveBenchReport, append_markdown

    machine = {"cpu": "cpu", "nproc": "2", "memory": "1 GiB", "load": "0", "versions": "v"}
    out = tmp_path / "bench.md"
    append_markdown(ResolveBenchReport("t1", machine, {"warm-up": "none"}), out, [1000, 1000],
                    90, 7, warmup=False)
    append_markdown(ResolveBenchReport("t2", machine, {}), out, [500], 120, 3)
    text = out.read_text()
    assert ("`lakehouse bench resolve --classrooms 1000 --classrooms 1000 --duration 90 "
            "--seed 7 --no-warmup`") in text
    assert "`lakehouse bench resolve --classrooms 500 --duration 120 --seed 3`" in text
    assert "warm-up none" in text and text.count("## bench resolve, ") == 2
    assert ("CPU by process from the simulator's start until every case was final, as average "
            "cores busy (the machine has 2)") in text


def test_bench_help_markdown_names_the_command_that_reproduces_it(tmp_path: Path) -> None:
    from pipelines.bench.help import HelpBenchReport, append_markdown

    machine = {"cpu": "cpu", "nproc": "2", "memory": "1 GiB", "load": "0", "versions": "v"}
    out = tmp_path / "bench.md"
    append_markdown(HelpBenchReport("t1", machine, {}), out, [2000], 60, 0, 7, False,
                    warmup=False)
    append_markdown(HelpBenchReport("t2", machine, {}), out, [500], 90, 40, 3, True)
    text = out.read_text()
    assert ("`lakehouse bench help --classrooms 2000 --duration 60 --accuracy-classrooms 0 "
            "--seed 7 --no-warmup`") in text
    assert ("`lakehouse bench help --classrooms 500 --duration 90 --accuracy-classrooms 40 "
            "--seed 3 --join`") in text
    assert "from the simulator's start until every request was tagged" in text


def test_bench_command_line_carries_the_overrides_that_change_the_measurement(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.bench.help import command_env

    for name in [n for n in os.environ if n.startswith("LAKEHOUSE__")]:
        monkeypatch.delenv(name)
    assert command_env() == ""
    monkeypatch.setenv("LAKEHOUSE__SIMULATOR__SAMPLE_INTERVAL_S", "4")
    monkeypatch.setenv("LAKEHOUSE__HELP__STATE_PARTITIONS", "1")
    monkeypatch.setenv("LAKEHOUSE__POSTGRES__PASSWORD", "secret")
    monkeypatch.setenv("LAKEHOUSE__KAFKA__BOOTSTRAP_SERVERS", "somewhere:9092")
    assert command_env() == ("LAKEHOUSE__HELP__STATE_PARTITIONS=1 "
                             "LAKEHOUSE__SIMULATOR__SAMPLE_INTERVAL_S=4 ")


def test_window_state_samples_split_by_half_of_the_simulation() -> None:
    from pipelines.bench.help import WindowStateSampler

    sampler = WindowStateSampler(None, "unused", enabled=True)  # type: ignore[arg-type]
    sampler.samples = [(99.0, 500), (100.0, 10), (120.0, 40), (149.9, 30), (150.0, 35),
                       (200.0, 20), (201.0, 900)]
    assert sampler.halves(sim_start=100, sim_end=200) == (40, 35)
    assert WindowStateSampler(None, "x", enabled=True).halves(  # type: ignore[arg-type]
        sim_start=0, sim_end=1) == (0, 0)


def test_progress_log_rate_counts_data_batches_only() -> None:
    from pipelines.bench.help import ProgressLog

    log = ProgressLog()
    log.seen["help"] = {
        0: {"batchId": 0, "numInputRows": 0, "durationMs": {"triggerExecution": 9000}},
        1: {"batchId": 1, "numInputRows": 3000, "durationMs": {"triggerExecution": 1000}},
        2: {"batchId": 2, "numInputRows": 1000, "durationMs": {"triggerExecution": 1000}}}
    log.seen["idle"] = {0: {"batchId": 0, "numInputRows": 0, "durationMs": {}}}
    assert [p["batchId"] for p in log.data_batches("help")] == [1, 2]
    assert log.processed_rate("help") == 2000.0
    assert log.processed_rate("idle") == 0.0


def test_warm_up_keeps_nothing_but_a_failure_note() -> None:
    from rich.console import Console

    from pipelines.bench.help import warm_up, warmup_setting

    notes: list[str] = []
    ran: list[int] = []
    console = Console(file=io.StringIO())
    warm_up(lambda: ran.append(1), notes, console)
    assert ran == [1] and notes == []

    def broken() -> None:
        raise RuntimeError("simulate failed (1)")

    warm_up(broken, notes, console)
    assert notes == ["warm-up failed: simulate failed (1)"]
    assert warmup_setting([2000, 4000], 120, True) == "2,000 lessons x 120 s, unreported"
    assert warmup_setting([2000], 120, False) == "none"


def test_cpu_meter_counts_the_reaped_simulator_process() -> None:
    """A child that burns CPU and is reaped between start and stop is the `simulator` share."""
    import subprocess
    import sys

    from pipelines.bench.memory import CPU_SHARES, CpuMeter

    meter = CpuMeter()
    meter.start()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    span = meter.stop()
    assert set(span.cpu) == set(CPU_SHARES)
    assert 0.5 <= span.cpu["simulator"] < span.wall_s + 0.5
    assert span.cores() >= span.cores("simulator") > 0
