"""Each cell of a study as MLflow recorded it (status, nodes, epochs, when it ran): run by
tests/test_cluster_pipeline.py with the study's name."""

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
            f"{r.data.tags['variant']}-{r.data.tags['seed']}": {
                "status": r.info.status,
                "nodes": r.data.tags.get("adaskip.train_nodes"),
                "epochs": sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acc_super")),
                "span": [r.info.start_time / 1000, (r.info.end_time or 0) / 1000],
            }
            for r in cells
        }
    )
)
