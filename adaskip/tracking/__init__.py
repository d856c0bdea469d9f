"""The only package that talks to MLflow: :mod:`.uri` (which store, TLS, reachability), :mod:`.tracker` (runs),
:mod:`.registry` (the Model Registry, a part of the Tracker), :mod:`.outbox` (writes that wait for a store that went
away), :mod:`.tags` (the names they share), :mod:`.model` (the served pyfunc). The project's tracking server is an
operations tool apart from this adapter: :mod:`adaskip.ops.tracking_server`."""

from .tags import EXPERIMENT_KIND, MODEL_NAME, SHA_TAG, SKIP_TAG
from .tracker import (
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
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
