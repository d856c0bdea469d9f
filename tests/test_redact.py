"""Credentials stay in the environment: URIs carrying one are refused or cleaned, and what adaskip prints or logs is
redacted (passwords in URIs, credentials in query strings, the values of secret variables)."""

from __future__ import annotations

import io
import logging
import os

import pytest

from adaskip.config import ConfigError, parse_params
from adaskip.errors import describe
from adaskip.redact import RedactingFilter, credentials_in, redact
from adaskip.tracking import resolve_uri

SECRET = "wJalrXUtnFEMI-K7MDENG"


@pytest.mark.parametrize(
    "uri, has",
    [
        ("s3://bucket/prefix", False),
        ("s3://AKID:secret@bucket/p", True),
        ("http://user@host:5000", False),
        ("https://u:p@host", True),
        ("https://host/x?X-Amz-Signature=abc&y=1", True),
        ("/a/path:with@signs", False),
    ],
)
def test_credentials_in(uri: str, has: bool):
    assert credentials_in(uri) is has


def test_redact_uris_queries_and_secret_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "short")  # too short to mask: it would mask ordinary words
    text = (
        f"s3://AKID:{SECRET}@bucket/x failed; see https://admin:pw1234@10.0.0.5:5000/#/ and "
        f"https://b.s3/o?X-Amz-Credential=AKID%2F&X-Amz-Signature=f00d&part=1; key {SECRET}; a short story"
    )
    assert redact(text) == (
        "s3://***@bucket/x failed; see https://***@10.0.0.5:5000/#/ and "
        "https://b.s3/o?X-Amz-Credential=***&X-Amz-Signature=***&part=1; key ***; a short story"
    )


def test_log_records_and_error_lines_are_redacted(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("adaskip.test_redact")
    logger.addHandler(handler)
    try:
        logger.warning("storage %s with token %s", "s3://k:v@b/p", SECRET)
        try:
            raise OSError(f"denied for http://u:p@h ({SECRET})")
        except OSError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert SECRET not in out.getvalue() and "k:v@" not in out.getvalue() and "u:p@" not in out.getvalue()
    assert "storage s3://***@b/p with token ***" in out.getvalue() and "denied for http://***@h (***)" in out.getvalue()
    assert describe(OSError(f"open s3://k:{SECRET}@b failed")) == "OSError: open s3://***@b failed"


def test_a_tracking_password_never_stays_in_the_uri(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri: https://\*\*\*@h carries a credential") as e:
        parse_params({"mlflow": {"tracking_uri": f"https://admin:{SECRET}@h"}})
    assert SECRET not in str(e.value)
    # the environment's URI: its login moves to MLflow's own variables, and adaskip passes on the address only
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://admin:{SECRET.replace('-', '%2D')}@h:5000")
    assert resolve_uri(None, tmp_path) == "https://h:5000"
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://h:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("admin", SECRET)
