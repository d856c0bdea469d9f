"""Every object of the S3 bucket scanned for a secret: run by tests/test_cluster_pipeline.py."""

import boto3
import json
import sys

s3 = boto3.client("s3")
keys, leaks = [], []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="adaskip-cluster"):
    for o in page.get("Contents", []):
        keys.append(o["Key"])
        if sys.argv[1].encode() in s3.get_object(Bucket="adaskip-cluster", Key=o["Key"])["Body"].read():
            leaks.append(o["Key"])
print("RESULT " + json.dumps({"keys": keys, "leaks": leaks}))
