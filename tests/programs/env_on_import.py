"""Importing adaskip leaves os.environ alone; configure_ray_env sets Ray's defaults where the user set nothing: run by
tests/test_reliability.py, prints three of Ray's variables after configure_ray_env."""

import os

before = dict(os.environ)
import adaskip.cli  # noqa: E402, F401 (what is imported is the test)
import adaskip.orchestration  # noqa: E402
import adaskip.orchestration.cluster  # noqa: E402, F401
import adaskip.stage  # noqa: E402, F401

assert dict(os.environ) == before, sorted(set(os.environ.items()) ^ set(before.items()))
adaskip.orchestration.configure_ray_env()
print(
    os.environ["RAY_USAGE_STATS_ENABLED"], os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"], os.environ["RAY_AUTH_MODE"]
)
