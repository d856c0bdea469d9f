"""The names several tracking modules (and the served model) share: tags on runs and registered versions."""

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
MODEL_NAME = "adaptive_net"  # the MLflow Model's name in the train run (model/model.pt is the raw file artifact)
SHA_TAG = "adaskip.model_sha256"  # on the registered version: which models/model.pt it serves
SKIP_TAG = "adaskip.skip"  # on a registered version: the sub-network it serves by default (see Tracker.set_alias)
ALIAS_TAG = "adaskip.alias."  # + alias, on the version holding it: the sub-network it serves
CANDIDATE_TAG = "adaskip.candidate."  # + alias, on an evaluated version: the sub-network it would serve if promoted
