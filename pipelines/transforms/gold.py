"""Gold: per classroom, role and minute, how healthy the class was."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

Transform = Callable[[DataFrame], DataFrame]

HEALTH_COLUMNS = ("classroom_id", "lesson_id", "role", "event_time", "packet_loss_pct", "rtt_ms",
                  "freeze_count", "is_disconnect", "is_wb_fail", "is_enter_fail")


def _shape(df: DataFrame, **columns: Column) -> DataFrame:
    """Project one silver stream onto the common health shape (missing measures are null/0)."""
    defaults: dict[str, Column] = {
        "packet_loss_pct": F.lit(None).cast("double"), "rtt_ms": F.lit(None).cast("double"),
        "freeze_count": F.lit(0).cast("long"), "is_disconnect": F.lit(0),
        "is_wb_fail": F.lit(0), "is_enter_fail": F.lit(0),
    }
    defaults.update(columns)
    return df.select("classroom_id", "lesson_id", "role", "event_time",
                     *(defaults[name].alias(name) for name in HEALTH_COLUMNS[4:]))


def av_health(df: DataFrame) -> DataFrame:
    """AV samples: loss and rtt as measured; freezes only count on the receiving side."""
    return _shape(df, packet_loss_pct=F.col("packet_loss_pct").cast("double"),
                  rtt_ms=F.col("rtt_ms").cast("double"),
                  freeze_count=F.when(F.col("direction") == "down",
                                      F.coalesce(F.col("freeze_count"), F.lit(0)))
                  .otherwise(0).cast("long"))


def signal_health(df: DataFrame) -> DataFrame:
    return _shape(df, rtt_ms=F.col("rtt_ms").cast("double"),
                  is_disconnect=(F.col("event_type") == "signal.disconnect").cast("int"))


def whiteboard_health(df: DataFrame) -> DataFrame:
    return _shape(df, is_wb_fail=(F.col("event_type") == "wb.load_fail").cast("int"))


def enter_health(df: DataFrame) -> DataFrame:
    return _shape(df, is_enter_fail=(F.col("step") == "enter_fail").cast("int"))


def health_score(p95_loss: Column, mean_rtt: Column, freezes: Column, disconnects: Column,
                 wb_fails: Column, enter_fails: Column) -> Column:
    """100 is a perfect minute; each problem costs points, floored at 0.

    Weights: 2 per % of p95 loss, 1 per 20 ms of mean rtt above 100 ms, 5 per freeze,
    15 per disconnect, 10 per whiteboard load failure, 20 per failed entry.
    """
    penalty = (F.coalesce(p95_loss, F.lit(0.0)) * 2
               + F.greatest(F.coalesce(mean_rtt, F.lit(0.0)) - 100, F.lit(0.0)) / 20
               + freezes * 5 + disconnects * 15 + wb_fails * 10 + enter_fails * 20)
    return F.greatest(F.lit(0.0), F.lit(100.0) - penalty)


def classroom_health_1m(watermark_delay: str) -> Transform:
    """Windowed per (classroom, role, minute), finalised when the event-time watermark passes."""

    def apply(events: DataFrame) -> DataFrame:
        agg = (events.withWatermark("event_time", watermark_delay)
               .groupBy("classroom_id", "role", F.window("event_time", "1 minute"))
               .agg(F.first("lesson_id", ignorenulls=True).alias("lesson_id"),
                    F.percentile_approx("packet_loss_pct", 0.95).alias("p95_packet_loss_pct"),
                    F.avg("rtt_ms").alias("mean_rtt_ms"),
                    F.sum("freeze_count").alias("freezes"),
                    F.sum("is_disconnect").alias("disconnects"),
                    F.sum("is_wb_fail").alias("whiteboard_failures"),
                    F.sum("is_enter_fail").alias("enter_failures"),
                    F.count("*").alias("events")))
        return agg.select(
            "classroom_id", "lesson_id", "role",
            F.col("window.start").alias("minute"), "p95_packet_loss_pct", "mean_rtt_ms",
            "freezes", "disconnects", "whiteboard_failures", "enter_failures", "events",
            health_score(F.col("p95_packet_loss_pct"), F.col("mean_rtt_ms"), F.col("freezes"),
                         F.col("disconnects"), F.col("whiteboard_failures"),
                         F.col("enter_failures")).alias("health_score"),
            F.to_date(F.col("window.start")).alias("minute_date"))

    return apply
