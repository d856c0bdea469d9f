"""Wait until the attached Ray cluster lists ALIVE nodes alive (with --dead: and at least one dead, the killed one
Ray has noticed), at most TIMEOUT seconds: run by tests/multihost.py on host 1.

    python wait_nodes.py ALIVE TIMEOUT [--dead]
"""

import sys
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import wait_until  # noqa: E402 (tests/ is not a package)

alive, timeout, dead = int(sys.argv[1]), float(sys.argv[2]), "--dead" in sys.argv
ray.init(logging_level="ERROR")


def ready() -> bool:
    nodes = ray.nodes()
    return sum(n["Alive"] for n in nodes) == alive and (not dead or any(not n["Alive"] for n in nodes))


try:
    wait_until(
        ready,
        timeout,
        f"{alive} alive nodes" + (" and a dead one" if dead else ""),
        detail=lambda: str([(n["NodeManagerAddress"], n["Alive"]) for n in ray.nodes()]),
    )
except RuntimeError as e:
    sys.exit(str(e))
