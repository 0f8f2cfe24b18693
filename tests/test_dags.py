"""DAG integrity: the DAG files import cleanly and touch no database at parse time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parent.parent / "dags"

PARSE = """
import sys
from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
for dag_id, dag in sorted(bag.dags.items()):
    assert dag.tags, dag_id
    assert dag.catchup is False, dag_id
    assert dag.start_date.tzinfo is not None, dag_id
    assert (dag.doc_md or dag.description), dag_id
    print(dag_id, len(dag.tasks))
"""


def test_dags_parse_without_errors_or_database(tmp_path) -> None:
    home = tmp_path / "airflow"
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           # A metadata DB that cannot be opened (its folder does not exist): parsing must not
           # need it.
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/missing/airflow.db",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run([sys.executable, "-c", PARSE, str(DAGS)], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "missing").exists()
    found = dict(line.split() for line in result.stdout.splitlines()
                 if line.startswith("lakehouse_"))
    assert set(found) == {"lakehouse_catch_up", "lakehouse_maintenance"}
    assert int(found["lakehouse_catch_up"]) == 4  # bronze, silver, gold, quality checkpoint
