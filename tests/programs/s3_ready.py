"""Wait until the S3 API server on the head answers: run by tests/test_cluster_pipeline.py."""

import boto3
import sys
import time

s3 = boto3.client("s3")
for _ in range(120):
    try:
        s3.create_bucket(Bucket="adaskip-cluster")
        break
    except Exception:
        time.sleep(0.5)
else:
    sys.exit("no S3 server")
