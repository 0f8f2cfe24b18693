"""Help resolver: kill -9 of the CLI between publishing actions and committing to Delta."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest
from resolver_loop import (
    REQUEST_AGE_MS,
    LiveClassrooms,
    check_outcomes,
    consume_all,
    gold,
    produce_tags,
    scenario,
)

from pipelines.transforms.playbook import ACT, FINAL_STATES


@pytest.mark.e2e
@pytest.mark.fault
def test_kill_9_mid_run_and_restart_end_each_case_once(broker, loop_settings) -> None:
    """SIGKILL in the documented window (actions on Kafka, batch not in Delta), restart: every
    help_id ends in exactly one final state and gold holds each action_id once; Kafka holds a
    repeat only of that batch's actions, byte-identical, which consumers drop by action_id."""
    from kafka_helpers import lakehouse_cli

    settings, env = loop_settings
    env = {**env, "LAKEHOUSE__BROKER__PORT": str(broker.settings.broker.port)}
    rooms = scenario()
    live = LiveClassrooms(settings, rooms).start()
    try:
        time.sleep(5)
        produce_tags(live, rooms, int(time.time() * 1000) - REQUEST_AGE_MS)
        killed = lakehouse_cli(["run", "resolver", "--once"],
                               {**env, "LAKEHOUSE__RESOLVER__KILL_AFTER_PUBLISH_BATCH": "0"},
                               timeout=400)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        published_before_restart = {a["action_id"] for a in live.received}
        assert published_before_restart, "the kill should come after some actions went out"
        done = lakehouse_cli(["run", "resolver", "--once"], env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        live.stop()
    rows = gold(settings)
    finals = Counter(r["help_id"] for r in rows if r["state"] in FINAL_STATES)
    assert sorted(finals) == sorted(r.help_id for r in rooms) and set(finals.values()) == {1}
    check_outcomes(rows, live)
    messages: dict[str, list[bytes]] = {}
    for value in consume_all(settings, settings.resolver.actions_topic):
        messages.setdefault(json.loads(value)["action_id"], []).append(value)
    repeated = {a for a, vs in messages.items() if len(vs) > 1}
    # The killed batch's actions, and only those, went out twice (its replay), unchanged.
    assert repeated == published_before_restart
    assert all(len(set(messages[a])) == 1 for a in repeated)  # the same message again
    assert set(messages) == {r["action_id"] for r in rows if r["state"] == ACT}
