"""What a pipeline run on the cluster left in MLflow and the storage: run by tests/test_cluster_pipeline.py."""

import json
import sys
from mlflow.tracking import MlflowClient

c = MlflowClient()
exp = c.get_experiment_by_name("adaskip")
runs = c.search_runs([exp.experiment_id], max_results=1000)
out = {
    "runs": [
        {
            "id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "tags": r.data.tags,
            "artifact_uri": r.info.artifact_uri,
        }
        for r in runs
    ],
    "epochs": {},
}
for r in runs:
    if r.data.tags.get("adaskip.stage") == "train":
        out["epochs"][r.info.run_id] = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acc_super"))
train = [r for r in runs if r.data.tags.get("adaskip.stage") == "train"]
if train:
    out["artifact"] = c.download_artifacts(train[0].info.run_id, "model/model.pt", sys.argv[1])
print("RESULT " + json.dumps(out))
