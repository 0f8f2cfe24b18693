"""The demo's run report: what each stage produced, read back from the tables it wrote.

Everything here is measured from the run's own outputs (Kafka end offsets, Delta tables, the
simulator's ground truth), never from counters the jobs keep in memory, so the report is also a
check that the tables hold what the run says. Written as Markdown plus PNG charts under
`<root>/demo/`, and printed as rich tables.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from rich.console import Group, RenderableType
from rich.table import Table

from pipelines.bench.help import score_tags
from pipelines.config import Settings
from pipelines.io.delta import delta_writer, read_table

if TYPE_CHECKING:  # matplotlib is imported only when charts are drawn
    from matplotlib.axes import Axes

FINAL_STATES = ("RESOLVED_AUTO", "RESOLVED_SELF", "ESCALATED")
RESOLUTIONS_TABLE = "gold.help_resolutions"
TAGS_TABLE = "gold.help_tags"


@dataclass
class DemoReport:
    classrooms: int
    duration_s: float
    seed: int
    produced: int
    bronze_rows: int
    silver_rows: dict[str, int]
    rejects_by_reason: dict[str, int]
    duplicates: int
    dropped_by_watermark: int
    help_requests: int
    tagged: int
    tag_accuracy: float
    tag_scores: dict[str, tuple[float, float]]
    outcomes: dict[str, int]
    outcomes_by_tag: dict[str, dict[str, int]]
    open_cases: int
    fixable: int | None
    fixable_resolved_auto: int | None
    tag_latency_s: list[float] = field(default_factory=list)
    resolution_latency_s: list[float] = field(default_factory=list)
    outcome_problems: list[str] = field(default_factory=list)
    charts: list[Path] = field(default_factory=list)

    @property
    def auto_resolved_share(self) -> float:
        return self.outcomes.get("RESOLVED_AUTO", 0) / max(self.help_requests, 1)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (NaN when empty): small samples, no interpolation surprises."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def outcome_problems(truth: dict[str, dict], finals: list[dict]) -> list[str]:
    """The outcomes against the simulator's ground truth, one line per breach: a request with
    not exactly one final state, RESOLVED_AUTO before its fault was fixed (or never fixed), an
    unfixable fault not ESCALATED. `finals`: gold.help_resolutions rows in a final state
    (help_id, state, transition_time)."""
    ends: dict[str, list[dict]] = {}
    for row in finals:
        ends.setdefault(row["help_id"], []).append(row)
    problems = []
    for help_id, t in truth.items():
        rows = ends.get(help_id, [])
        if len(rows) != 1:
            problems.append(f"{help_id}: {len(rows)} final states")
            continue
        state, at = rows[0]["state"], rows[0]["transition_time"]
        at_ms = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000
        fixed_ms = t.get("fixed_at_ms")
        if state == "RESOLVED_AUTO" and (fixed_ms is None or fixed_ms > at_ms):
            problems.append(f"{help_id}: RESOLVED_AUTO at {at_ms:.0f} but fixed at {fixed_ms}")
        if t["cause"] != "NO_ISSUE_DETECTED" and not t.get("fixable") and state != "ESCALATED":
            problems.append(f"{help_id}: unfixable {t['cause']} ended {state}")
    return problems


def _table(spark: SparkSession, settings: Settings, name: str):
    return read_table(spark, settings, name) \
        if delta_writer(settings).exists(settings.table_path(name)) else None


def collect_report(spark: SparkSession, settings: Settings, *, truth_path: Path, produced: int,
                   classrooms: int, duration_s: float, seed: int,
                   silver_tables: list[str]) -> DemoReport:
    """Read the run's tables and the ground truth into a DemoReport."""
    truth_raw: dict[str, dict] = json.loads(truth_path.read_text()) if truth_path.exists() else {}
    truth = {h: t["cause"] for h, t in truth_raw.items()}
    bronze = _table(spark, settings, "bronze.events")
    silver_rows = {}
    for name in silver_tables:
        df = _table(spark, settings, name)
        silver_rows[name] = df.count() if df is not None else 0
    rejects = _table(spark, settings, "silver.rejects")
    by_reason = {r.reject_reason: r["count"] for r in
                 rejects.groupBy("reject_reason").count().collect()} if rejects is not None else {}
    progress = _table(spark, settings, "ops.stream_progress")
    duplicates = dropped = 0
    if progress is not None:
        sums = (progress.where(F.col("query_name") == "silver")
                .agg(F.sum("dropped_duplicates"), F.sum("dropped_by_watermark")).first())
        duplicates, dropped = int(sums[0] or 0), int(sums[1] or 0)

    tags = _table(spark, settings, TAGS_TABLE)
    tag_rows = tags.select("help_id", "primary_tag", "latency_ms").toPandas() \
        if tags is not None else pd.DataFrame(columns=["help_id", "primary_tag", "latency_ms"])
    got = dict(zip(tag_rows.help_id, tag_rows.primary_tag, strict=True))
    _, scores = score_tags(truth, got)
    accuracy = sum(got.get(h) == c for h, c in truth.items()) / max(len(truth), 1)

    outcomes: Counter[str] = Counter()
    by_tag: dict[str, Counter[str]] = {}
    resolution_s: list[float] = []
    final_of: dict[str, str] = {}
    problems: list[str] = []
    resolutions = _table(spark, settings, RESOLUTIONS_TABLE)
    if resolutions is not None:
        finals = (resolutions.where(F.col("state").isin(*FINAL_STATES))
                  .select("help_id", "primary_tag", "state", "transition_time", "request_time")
                  .toPandas())
        for row in finals.itertuples():
            final_of[row.help_id] = row.state
            outcomes[row.state] += 1
            by_tag.setdefault(row.primary_tag, Counter())[row.state] += 1
            if row.state == "RESOLVED_AUTO":
                resolution_s.append((row.transition_time - row.request_time).total_seconds())
        problems = outcome_problems(truth_raw, finals.to_dict("records"))
    fixable = [h for h, t in truth_raw.items() if t.get("fixable")] \
        if any("fixable" in t for t in truth_raw.values()) else None
    return DemoReport(
        classrooms=classrooms, duration_s=duration_s, seed=seed, produced=produced,
        bronze_rows=bronze.count() if bronze is not None else 0, silver_rows=silver_rows,
        rejects_by_reason=by_reason, duplicates=duplicates,
        dropped_by_watermark=dropped, help_requests=len(truth),
        tagged=len(got), tag_accuracy=accuracy, tag_scores=scores, outcomes=dict(outcomes),
        outcomes_by_tag={t: dict(c) for t, c in by_tag.items()},
        open_cases=len(set(got) - set(final_of)),
        fixable=None if fixable is None else len(fixable),
        fixable_resolved_auto=None if fixable is None else sum(
            final_of.get(h) == "RESOLVED_AUTO" for h in fixable),
        tag_latency_s=[float(v) / 1000 for v in tag_rows.latency_ms.dropna()],
        resolution_latency_s=resolution_s, outcome_problems=problems)


def _s(value: float) -> str:
    return "-" if value != value else f"{value:.1f} s"


def summary_rows(r: DemoReport) -> list[tuple[str, str]]:
    """The headline figures, one (label, value) per line (shared by console and Markdown)."""
    rows = [("events produced (5 topics)", f"{r.produced:,}"),
            ("bronze.events rows", f"{r.bronze_rows:,}"),
            *((f"{name} rows", f"{n:,}") for name, n in r.silver_rows.items()),
            ("silver.rejects rows", f"{sum(r.rejects_by_reason.values()):,}"),
            *((f"  rejected: {reason}", f"{n:,}")
              for reason, n in sorted(r.rejects_by_reason.items())),
            ("duplicates dropped (event_id)", f"{r.duplicates:,}"),
            ("dropped behind the dedup watermark", f"{r.dropped_by_watermark:,}"),
            ("bronze = accepted + rejected + duplicates + dropped",
             "yes" if r.bronze_rows == sum(r.silver_rows.values())
             + sum(r.rejects_by_reason.values()) + r.duplicates + r.dropped_by_watermark
             else "no (a job had not drained)"),
            ("Help requests (ground truth)", f"{r.help_requests:,}"),
            ("tagged", f"{r.tagged:,}"),
            ("primary tag = injected cause", f"{r.tag_accuracy:.0%}"),
            ("request -> tag p50 / p95", f"{_s(percentile(r.tag_latency_s, .5))} / "
                                         f"{_s(percentile(r.tag_latency_s, .95))}")]
    for state in FINAL_STATES:
        rows.append((state, f"{r.outcomes.get(state, 0):,}"))
    rows += [("auto-resolved share of requests", f"{r.auto_resolved_share:.0%}"),
             ("still open at the end", f"{r.open_cases:,}"),
             ("request -> RESOLVED_AUTO p50 / p95",
              f"{_s(percentile(r.resolution_latency_s, .5))} / "
              f"{_s(percentile(r.resolution_latency_s, .95))}")]
    if r.fixable is not None:
        rows.append(("fixable faults resolved automatically",
                     f"{r.fixable_resolved_auto:,} of {r.fixable:,}"))
    rows.append(("outcomes against ground truth", "as expected" if not r.outcome_problems
                 else f"{len(r.outcome_problems):,} problems: {r.outcome_problems[0]}"))
    return rows


def render(r: DemoReport) -> RenderableType:
    table = Table(title=f"demo: {r.classrooms} classrooms x {r.duration_s:g} s, seed {r.seed}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in summary_rows(r):
        table.add_row(label, value)
    tags = Table(title="tag precision / recall (primary tag vs injected cause)")
    for column in ("tag", "precision", "recall"):
        tags.add_column(column)
    for tag, (p, rec) in sorted(r.tag_scores.items()):
        tags.add_row(tag, f"{p:.2f}", f"{rec:.2f}")
    return Group(table, tags)


@contextmanager
def _chart(path: Path, size: tuple[float, float], title: str) -> Iterator[Axes]:
    """One PNG chart (matplotlib, Agg backend): the body draws on the axes and labels them;
    then the title and legend go on and the figure is saved to `path` and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    yield ax
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latency_chart(r: DemoReport, path: Path) -> Path:
    with _chart(path, (7, 4), "Help latency distribution") as ax:
        for values, label in ((r.tag_latency_s, "request -> tag"),
                              (r.resolution_latency_s, "request -> RESOLVED_AUTO")):
            if values:
                ax.hist(values, bins=30, alpha=0.6, label=f"{label} (n={len(values)})")
        ax.set_xlabel("seconds")
        ax.set_ylabel("Help requests")
    return path


def _outcomes_chart(r: DemoReport, path: Path) -> Path:
    with _chart(path, (8, 4), "Outcome by primary tag") as ax:
        tags = sorted(r.outcomes_by_tag)
        bottom = [0] * len(tags)
        for state in FINAL_STATES:
            counts = [r.outcomes_by_tag[t].get(state, 0) for t in tags]
            ax.barh(tags, counts, left=bottom, label=state)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        ax.set_xlabel("Help requests")
    return path


def write_charts(r: DemoReport, out_dir: Path) -> list[Path]:
    """Latency distribution and outcomes by tag, as PNG (matplotlib, no display needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_latency_chart(r, out_dir / "latency.png"),
            _outcomes_chart(r, out_dir / "outcomes.png")]


def write_markdown(r: DemoReport, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# classroom-lakehouse demo: {r.classrooms} classrooms x {r.duration_s:g} s, "
             f"seed {r.seed}", "", "| what | value |", "|---|---:|",
             *(f"| {label.strip()} | {value} |" for label, value in summary_rows(r)), "",
             "## Tag precision and recall", "", "| tag | precision | recall |", "|---|---:|---:|",
             *(f"| {t} | {p:.2f} | {rec:.2f} |" for t, (p, rec) in sorted(r.tag_scores.items())),
             "", "## Outcomes by primary tag", "",
             "| tag | " + " | ".join(FINAL_STATES) + " |", "|---|" + "---:|" * len(FINAL_STATES),
             *(f"| {t} | " + " | ".join(str(c.get(s, 0)) for s in FINAL_STATES) + " |"
               for t, c in sorted(r.outcomes_by_tag.items())), ""]
    lines += [f"![{p.stem}]({p.name})" for p in r.charts]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
