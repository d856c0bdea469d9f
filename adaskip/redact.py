"""Credentials stay in the environment: what adaskip prints, logs or persists loses them.

Credentials (S3 keys and session tokens, the tracking server's password or token, Ray's token) are read where they
are used, from the environment (or an instance role), never from a URI or a file adaskip writes. Here: the check
that refuses a URI carrying one, and the redaction every error line and log record passes through (passwords in
URIs, credentials in query strings, and the values of the secret variables this process holds).
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlsplit

# the variables whose values are secret wherever they appear (Ray's token file is Ray's own, never read here)
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "RAY_AUTH_TOKEN",
)
MASK = "***"
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@?#]+@")
_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-(?:signature|credential|security-token)|access_?key(?:_?id)?|secret(?:_?key)?|"
    r"(?:session_?)?token|password|passwd|sig|signature)=)[^&\s#]+"
)


def credentials_in(uri: str) -> bool:
    """Whether ``uri`` carries a credential: a password in its user info (``s3://key:secret@bucket``,
    ``http://user:pass@host``), or a credential in its query string."""
    if "://" not in uri:
        return False
    return ":" in (urlsplit(uri).netloc.rpartition("@")[0]) or bool(_QUERY.search(uri))


def _secret_values() -> list[str]:
    # short values are not masked: they would mask ordinary words ("testing")
    return sorted({v for k in SECRET_ENV if len(v := os.environ.get(k, "")) >= 8}, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with the user info of every URI, every credential in a query string and the value of every secret
    variable of this environment replaced by ``***``."""
    text = _QUERY.sub(lambda m: m.group(1) + MASK, _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text))
    for value in _secret_values():
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter (on a handler) that redacts each record's message, its arguments merged in, and its
    exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
