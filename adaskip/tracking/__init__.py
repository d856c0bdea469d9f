"""The only package that talks to MLflow: :mod:`.uri` (which store, TLS, reachability), :mod:`.tracker` (runs and
the Model Registry), :mod:`.model` (the served pyfunc), :mod:`.server` (the project's tracking server) and
:mod:`.serve` (``mlflow models serve`` on loopback)."""

from .tracker import (
    EXPERIMENT_KIND,
    FAILED,
    FINISHED,
    KILLED,
    MODEL_NAME,
    RUNNING,
    SHA_TAG,
    SKIP_TAG,
    Tracker,
    flatten,
    load_table,
    pareto_tags,
    provenance_tags,
    skip_params,
    table,
)
from .uri import CERT_ENV, TrackingError, check_access, check_reachable, resolve_uri, tls_context

__all__ = [
    "CERT_ENV",
    "EXPERIMENT_KIND",
    "FAILED",
    "FINISHED",
    "KILLED",
    "MODEL_NAME",
    "RUNNING",
    "SHA_TAG",
    "SKIP_TAG",
    "Tracker",
    "TrackingError",
    "check_access",
    "check_reachable",
    "flatten",
    "load_table",
    "pareto_tags",
    "provenance_tags",
    "resolve_uri",
    "skip_params",
    "table",
    "tls_context",
]
