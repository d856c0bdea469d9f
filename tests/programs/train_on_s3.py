"""A Ray Train run with its storage at argv[2] (s3://...), params from argv[1] (JSON), in a Ray of its own started
by this process (whose environment holds the S3 keys, as a stage's does); prints the final epoch and state as JSON.
Run by tests/test_storage.py."""

import json
import sys
import ray
from adaskip.config import Params
from adaskip.orchestration.storage import Storage
from adaskip.orchestration.train import run_training

ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
store = Storage.resolve(sys.argv[2], ".")
metrics, state = run_training(Params.model_validate(json.loads(sys.argv[1])), store, "train-s3")
print(json.dumps({"epoch": metrics["epoch"], "state_epoch": state["epoch"], "has_model": "model" in state}))
