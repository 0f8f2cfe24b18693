"""Planning of the Python Kafka source: rate limit and restart position."""

from __future__ import annotations

import json

from pipelines.io.kafka_source import _last_logged_end, _plan_limit


def test_plan_limit_takes_exactly_the_limit_in_proportion_to_backlog() -> None:
    start = {"a": {"0": 0, "1": 10}, "b": {"0": 5}}
    latest = {"a": {"0": 333, "1": 10}, "b": {"0": 672}}
    end = _plan_limit(start, latest, 100)
    taken = {(t, p): end[t][p] - start[t][p] for t in end for p in end[t]}
    assert sum(taken.values()) == 100
    assert taken[("a", "1")] == 0
    assert 30 <= taken[("a", "0")] <= 35 and 65 <= taken[("b", "0")] <= 70


def test_plan_limit_returns_latest_when_backlog_fits() -> None:
    latest = {"a": {"0": 50}}
    assert _plan_limit({"a": {"0": 0}}, latest, 100) == latest


def test_plan_limit_reads_new_partitions_from_zero() -> None:
    end = _plan_limit({"a": {"0": 10}}, {"a": {"0": 10, "1": 40}}, 25)
    assert end == {"a": {"0": 10, "1": 25}}


def test_plan_limit_cuts_every_partition_at_about_the_same_time() -> None:
    """A partition whose backlog is bunched at its start (enter events at lesson start) is
    read as far in time as the others: the cut falls inside the first interval between
    marks that holds more than the limit, not in proportion to the whole backlog."""
    start = {"av": {"0": 0}, "enter": {"0": 0}}
    # Offsets seen at four earlier plannings, one every few seconds: av grows evenly, enter
    # got 900 of its 1,000 records before the first.
    marks = [{"av": {"0": 250 * i}, "enter": {"0": e}} for i, e in
             ((1, 900), (2, 933), (3, 966), (4, 1000))]
    latest = marks[-1]
    proportional = _plan_limit(start, latest, 1200)
    assert proportional == {"av": {"0": 600}, "enter": {"0": 600}}  # enter before marks[0]
    aligned = _plan_limit(start, latest, 1200, marks)
    assert aligned["enter"]["0"] >= 900 and aligned["av"]["0"] >= 250  # both past marks[0]
    assert aligned["av"]["0"] + aligned["enter"]["0"] == 1200
    # The 50 records past marks[0] are split 250:33, as the second interval's steps are.
    assert aligned == {"av": {"0": 295}, "enter": {"0": 905}}


def test_plan_limit_ignores_marks_behind_the_start_and_new_partitions() -> None:
    start = {"a": {"0": 100}}
    marks = [{"a": {"0": 50}}, {"a": {"0": 120}}, {"a": {"0": 300}, "b": {"0": 40}}]
    end = _plan_limit(start, {"a": {"0": 300}, "b": {"0": 40}}, 60, marks)
    assert end["a"]["0"] - 100 + end["b"]["0"] == 60
    assert end["a"]["0"] >= 120  # the mark inside the backlog bounds the cut from below


def test_restart_position_comes_from_the_newest_offset_log_entry(tmp_path) -> None:
    offsets = tmp_path / "offsets"
    offsets.mkdir()
    meta = json.dumps({"batchWatermarkMs": 0})
    (offsets / "0").write_text(f'v1\n{meta}\n{json.dumps({"a": {"0": 5}})}\n')
    (offsets / "1").write_text(f'v1\n{meta}\n{json.dumps({"a": {"0": 9}})}\n')
    assert _last_logged_end(str(tmp_path), {"a"}) == {"a": {"0": 9}}
    assert _last_logged_end(str(tmp_path), {"other"}) is None


def test_caught_up_compares_every_leaf_and_names() -> None:
    from pipelines.io.kafka import caught_up

    assert caught_up("{'a': {'0': 3, '1': 9}}", {"a": {"0": 3, "1": 8}})
    assert not caught_up({"a": {"0": 2}}, {"a": {"0": 3}})
    assert not caught_up({"a": {"0": 5}}, {"b": {"0": 1}})
    assert caught_up('{"table": "/t", "version": 4}', {"table": "/t", "version": 4})
    assert not caught_up({"table": "/other", "version": 9}, {"table": "/t", "version": 4})
    assert not caught_up(None, {"version": 1})


def test_consecutive_reads_in_one_worker_each_get_their_range(broker, tmp_path) -> None:
    """Reads one after another in one process (as a reused Python worker does) each return
    exactly their range, including after a read abandoned half-way."""
    from kafka_helpers import produce, topic_prefix_env

    from pipelines.io.kafka_source import TopicPartitionRange, read_ranges

    settings = broker.make_settings(tmp_path, topic_prefix_env())
    topic = settings.kafka_topic("classroom.help")
    produce(settings, [(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(50)])
    options = settings.kafka.client_options()

    def values(start: int, end: int) -> list[bytes]:
        ranges = (TopicPartitionRange(topic, 0, start, end),)
        return [v for batch in read_ranges(options, ranges, timeout_s=30)
                for v in batch.column("value").to_pylist()]

    assert values(10, 50) == [f"v{i}".encode() for i in range(10, 50)]
    assert values(0, 10) == [f"v{i}".encode() for i in range(10)]
    partial = read_ranges(options, (TopicPartitionRange(topic, 0, 0, 50),), timeout_s=30,
                          batch_rows=5)
    next(partial)
    partial.close()
    assert values(45, 50) == [f"v{i}".encode() for i in range(45, 50)]


def test_capped_reader_keeps_partitions_aligned_across_plannings(broker, tmp_path) -> None:
    """The real reader on the real broker: under a cap, the av records produced after the
    enter burst are not planned before the burst is (marks taken at each planning)."""
    from kafka_helpers import produce, topic_prefix_env

    from pipelines.io.kafka_source import KafkaStreamReader

    settings = broker.make_settings(tmp_path, topic_prefix_env())
    enter, av = (settings.kafka_topic(t) for t in ("classroom.enter", "classroom.help"))
    options = {f"kafka.{k}": v for k, v in settings.kafka.client_options().items()}
    reader = KafkaStreamReader({**options, "subscribe": f"{enter},{av}",
                                "maxOffsetsPerTrigger": "100", "readTimeoutSeconds": "30"})
    produce(settings, [(enter, None, b"e")] * 500 + [(av, None, b"a")] * 50)
    reader.initialOffset()
    plans = [reader.latestOffset()]  # the burst's time: 500 enter, 50 av records
    produce(settings, [(av, None, b"a")] * 500 + [(enter, None, b"e")] * 50)
    while plans[-1][enter]["0"] < 550 or plans[-1][av]["0"] < 550:
        plans.append(reader.latestOffset())
        assert len(plans) < 50
    for plan in plans:
        # av past the burst's time only once enter has read its burst
        assert plan[av]["0"] <= 50 or plan[enter]["0"] >= 500, plans
    assert [sum(p[t]["0"] for t in (enter, av)) for p in plans[:4]] == [100, 200, 300, 400]
    reader.stop()
