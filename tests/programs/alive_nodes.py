"""The alive nodes of the attached Ray cluster: run by tests/test_cluster_pipeline.py."""

import json
import ray

ray.init(logging_level="ERROR")
print("RESULT " + json.dumps({n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}))
