"""Each study cell's epochs in MLflow: run by tests/test_cluster_pipeline.py."""

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
            r.info.run_name: {
                "status": r.info.status,
                "nodes": r.data.tags.get("adaskip.train_nodes"),
                "epochs": sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acc_super")),
            }
            for r in cells
        }
    )
)
