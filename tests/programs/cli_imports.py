"""Run ``adaskip ARGS...`` in this process and print which of the packages in HEAVY (comma-separated) it imported:
run by tests/test_cli.py.

    python cli_imports.py HEAVY ARGS...
"""

import sys

from adaskip.cli import main

heavy = set(sys.argv[1].split(","))
try:
    main(sys.argv[2:])
except SystemExit as e:
    assert e.code == 0, e.code
print(sorted({m.split(".")[0] for m in sys.modules} & heavy))
