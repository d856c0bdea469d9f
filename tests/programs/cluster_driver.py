"""A Ray driver on host1 of the two-host cluster: run by tests/test_cluster.py."""

import json
import sys
from pathlib import Path
import adaskip
import ray

project, shared, marker, marker2 = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
(project / marker).write_text("host1")
(shared / marker).write_text("host1")
ray.init(logging_level="ERROR")


@ray.remote(num_cpus=0)
def probe():
    import adaskip
    import ray

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "adaskip": adaskip.__file__,
        "sees_p": (project / marker).exists(),
        "sees_s": (shared / marker).exists(),
        "own_copy": (Path(adaskip.__file__).parents[1] / marker2).exists(),
    }


out = {
    "driver_adaskip": adaskip.__file__,
    "driver_ip": ray.util.get_node_ip_address(),
    "alive": sorted((n["NodeManagerAddress"], n["NodeID"]) for n in ray.nodes() if n["Alive"]),
    "tasks": {h: ray.get(probe.options(resources={h: 0.1}).remote()) for h in ("host1", "host2")},
}
print("RESULT " + json.dumps(out))
