"""Wait until URL answers over TLS with the certificate in CAFILE, at most TIMEOUT seconds: run by
tests/test_cluster_pipeline.py on host 1 (the tracking server's /health).

    python wait_https.py URL CAFILE TIMEOUT
"""

import ssl
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import wait_until  # noqa: E402 (tests/ is not a package)

url, cafile, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])


def healthy() -> bool:
    context = ssl.create_default_context(cafile=cafile)  # here: the server writes its certificate as it starts
    return urllib.request.urlopen(url, timeout=1, context=context).status == 200  # noqa: S310


try:
    wait_until(healthy, timeout, url)
except RuntimeError as e:
    sys.exit(str(e))
