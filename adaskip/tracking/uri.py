"""Where MLflow runs go and whether that store can be used: the tracking URI (``MLFLOW_TRACKING_URI``, params.yaml,
the project's SQLite file), its login moved to the environment, TLS verification, reachability and access."""

from __future__ import annotations

import os
import ssl
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import AdaskipError
from ..redact import credentials_in


class TrackingError(AdaskipError, RuntimeError):
    """The MLflow tracking store cannot be reached or used."""

    recurs = False  # the tracking server may be back by the next attempt


def _login_to_env(uri: str) -> str:
    """``http://user:pass@host`` in MLFLOW_TRACKING_URI: the login moves to MLFLOW_TRACKING_USERNAME/PASSWORD (what
    the user set there wins) and the URI loses it, so what adaskip passes to workers and trials, and prints, holds
    the server's address only."""
    parts = urlsplit(uri)
    login, _, host = parts.netloc.rpartition("@")
    user, _, password = login.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    os.environ["MLFLOW_TRACKING_URI"] = clean = urlunsplit(parts._replace(netloc=host))
    return clean


def resolve_uri(configured: Optional[str], root: str | os.PathLike) -> str:
    """``MLFLOW_TRACKING_URI`` wins, then params.yaml's ``mlflow.tracking_uri``, then an absolute
    ``sqlite:///<root>/mlflow.db`` (absolute: Ray workers run with another cwd)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri and credentials_in(uri):  # only the environment's can (params.yaml's is refused): see _login_to_env
        uri = _login_to_env(uri)
    if uri and "://" not in uri:  # a bare path: make it absolute
        uri = Path(uri).resolve().as_uri()
    return uri or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


CERT_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"  # MLflow's own: the certificate (or CA bundle) clients verify with


def tls_context() -> ssl.SSLContext:
    """How MLflow's client verifies an HTTPS tracking server: against ``MLFLOW_TRACKING_SERVER_CERT_PATH`` if set,
    else the system's CAs (``MLFLOW_TRACKING_INSECURE_TLS=true``: not at all)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # noqa: S323 (the user's explicit choice, as in MLflow)
    return ssl.create_default_context(cafile=os.environ.get(CERT_ENV) or None)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer or its certificate does not
    verify."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(
                uri.rstrip("/") + "/health",
                timeout=timeout,  # noqa: S310 (user's own server)
                context=tls_context() if uri.startswith("https://") else None,
            )
        except OSError as e:
            if isinstance(getattr(e, "reason", e), ssl.SSLCertVerificationError):
                raise TrackingError(
                    f"MLflow tracking server {uri}: its certificate does not verify "
                    f"({getattr(e, 'reason', e).verify_message}): set {CERT_ENV} to the server's "
                    "certificate (the tracking server's --self-signed prints it) or its CA bundle"
                ) from None
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({e}); start it or unset "
                "MLFLOW_TRACKING_URI / mlflow.tracking_uri to use the local store"
            ) from None


def check_access(uri: str) -> None:
    """``check_reachable``, then one authenticated read: a server with basic auth refuses a client whose
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` are missing or wrong."""
    check_reachable(uri)
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as e:
        if e.get_http_status_code() in (401, 403) or " 401" in str(e) or " 403" in str(e):
            raise TrackingError(
                f"MLflow tracking server {uri} refused this client's credentials: set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the driver passes its own "
                "on to the cluster's workers)"
            ) from None
        raise TrackingError(f"MLflow tracking server {uri} failed a read: {str(e)[:200]}") from None
