"""When each study cell ran: run by tests/test_cluster_pipeline.py."""

import json
import sys
from mlflow.tracking import MlflowClient

c = MlflowClient()
exp = c.get_experiment_by_name("adaskip")
[parent] = c.search_runs([exp.experiment_id], f"tags.`adaskip.study` = '{sys.argv[1]}'")
cells = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
print(
    "RESULT "
    + json.dumps(
        {
            r.data.tags["variant"] + "-" + r.data.tags["seed"]: [r.info.start_time / 1000, r.info.end_time / 1000]
            for r in cells
        }
    )
)
