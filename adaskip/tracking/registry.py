"""The Model Registry side of a :class:`~adaskip.tracking.tracker.Tracker`: logging and registering the served model,
finding the version that serves a model file, the aliases evaluate offers and ``adaskip promote`` moves, the grid and
latency tables beside a served model, and downloading one. A mixin of the Tracker, so that its writes queue in the
same outbox as the runs' (:func:`~adaskip.tracking.outbox.deferrable`)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import pandas as pd

from ..console import verbose
from ..files import file_sha256
from ..serving import ATTACHED, GRID_FILE
from .outbox import answered, deferrable
from .tags import ALIAS_TAG, CANDIDATE_TAG, MODEL_NAME, SHA_TAG, SKIP_TAG
from .uri import TrackingError

log = logging.getLogger("adaskip.tracking")


class Registry:
    """Registry operations of a Tracker (``self.uri``, ``self.client``, ``self.set_tags`` are the Tracker's)."""

    @deferrable(files=("path",))
    def log_model(
        self,
        run_id: str,
        path: str | os.PathLike,
        registered_model: Optional[str],
        image_size: Optional[int] = None,
        tags: Optional[Mapping[str, Any]] = None,
    ) -> Optional[int]:
        """Log the model file ``path`` as an MLflow Model (pyfunc :class:`.model.AdaptiveDepthModel`, with input
        signature and a ``skip`` inference parameter) in run ``run_id``, and register it as a new version of
        ``registered_model`` (None: not registered). Returns the version, tagged with ``tags`` (what it trained) and
        the file's sha256, so that :meth:`tag_model_version` finds it from the file alone."""
        import mlflow
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        from ..models.file import load_file, num_stages

        with _quiet_model_logging():  # defining the pyfunc class warns that predict has no type hints (on purpose)
            from .model import AdaptiveDepthModel, requirements, signature
        obj = load_file(path)
        spec = obj["spec"]
        size = int(image_size or obj.get("image_size") or 224)
        sha = file_sha256(path)
        with _use_tracking_uri(self.uri), _quiet_model_logging():
            info = mlflow.models.Model.log(
                None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                registered_model_name=registered_model,
                python_model=AdaptiveDepthModel(),
                artifacts={"model": str(Path(path).resolve())},
                signature=signature(size, int(spec["num_classes"]), num_stages(spec)),
                pip_requirements=requirements(),
                tags={SHA_TAG: sha},
            )
        if not registered_model:
            return None
        version = int(info.registered_model_version)
        self.tag_model_version(registered_model, str(version), {**(tags or {}), SHA_TAG: sha})
        self.set_tags(run_id, {"adaskip.registered_model": f"{registered_model}/{version}"})
        return version

    @answered(None)
    def model_version(self, registered_model: str, path: str | os.PathLike) -> Optional[str]:
        """The newest registered version of ``registered_model`` that serves the model file ``path`` (by sha256)."""
        return self._version_of(registered_model, file_sha256(path))

    def _version_of(self, registered_model: str, sha: str) -> Optional[str]:
        from mlflow.exceptions import MlflowException

        try:
            versions = self.client.search_model_versions(f"name = '{registered_model}'")
        except MlflowException:
            return None
        hits = [v for v in versions if v.tags.get(SHA_TAG) == sha]
        hits = [v for v in hits if SKIP_TAG not in v.tags] or hits  # the train stage's, not an alias's (set_alias)
        return str(max(int(v.version) for v in hits)) if hits else None

    @deferrable
    def tag_model_version(self, registered_model: str, version: str, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(registered_model, version, k, str(v))

    def attach_to_model(self, registered_model: str, version: str, tables: Mapping[str, pd.DataFrame]) -> None:
        """Write ``tables`` as CSV files (``{"latency/cpu.csv": df}``) into the MLflow Model directory that version
        ``version`` serves, under ``adaskip/``, where the served model reads them at load (every version registered
        from the same logged model sees them: same weights, same figures)."""

        source = self.client.get_model_version(registered_model, version).source
        if not (model_id := logged_model_id(source)):
            raise TrackingError(
                f"{registered_model} version {version} comes from {source}, not from an MLflow 3 "
                "logged model: re-register it with the train stage to attach tables to it"
            )
        with tempfile.TemporaryDirectory() as tmp:
            for name, table in tables.items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                table.to_csv(Path(tmp) / name, index=False)
            self.client.log_model_artifacts(model_id, tmp, ATTACHED)

    def set_alias(self, registered_model: str, version: str, alias: str, skip: str) -> str:
        """Point ``@alias`` at a version that serves sub-network ``skip`` by default: ``version`` itself for the
        super-net, else a version registered from the same logged model and tagged ``adaskip.skip`` (found again by
        source and skip, so a re-run registers nothing new); tag it ``adaskip.alias.<alias>`` = skip. Returns it."""
        mv = self.client.get_model_version(registered_model, version)
        if skip == "F" * len(skip):  # the super-net: what ``version`` serves by default already
            target = mv
        else:
            same = self.client.search_model_versions(f"name = '{registered_model}'")
            found = [v for v in same if v.source == mv.source and v.tags.get(SKIP_TAG) == skip]
            tags = {k: v for k, v in mv.tags.items() if not k.startswith((ALIAS_TAG, CANDIDATE_TAG))}
            target = (
                found[0]
                if found
                else self.client.create_model_version(
                    registered_model,
                    mv.source,
                    run_id=mv.run_id,
                    tags={**tags, SKIP_TAG: skip},
                    description=f"version {version}'s model, serving sub-network {skip} by default",
                    # a tracking server requires the logged model a models:/m-... source names (a SQLite store not)
                    model_id=logged_model_id(mv.source),
                )
            )
        held = self.alias_version(registered_model, alias)
        self.client.set_registered_model_alias(registered_model, alias, target.version)
        self.client.set_model_version_tag(registered_model, target.version, f"{ALIAS_TAG}{alias}", skip)
        if held and held.version != target.version:  # the version it left says so no more
            self.client.delete_model_version_tag(registered_model, held.version, f"{ALIAS_TAG}{alias}")
        return str(target.version)

    def alias_version(self, registered_model: str, alias: str):
        """The ModelVersion ``@alias`` points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(registered_model, alias)
        except MlflowException:
            return None

    def offer_aliases(
        self, registered_model: str, version: str, wanted: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The registry's rule: record ``wanted`` (alias -> the skip it would serve) on ``version`` as candidate tags,
        and point an alias there only where no version holds it yet (the first registration) or one of the same
        logged model does (the same weights, re-evaluated). An alias another model holds stays: only
        :meth:`promote` moves it. Returns (alias -> version for the aliases set, alias -> version for those kept)."""
        self.tag_model_version(registered_model, version, {f"{CANDIDATE_TAG}{a}": s for a, s in wanted.items()})
        source = self.client.get_model_version(registered_model, version).source
        taken, kept = {}, {}
        for alias, skip in wanted.items():
            held = self.alias_version(registered_model, alias)
            if held is None or held.source == source:
                taken[alias] = self.set_alias(registered_model, version, alias, skip)
            else:
                kept[alias] = str(held.version)
        return taken, kept

    @deferrable
    def evaluated(
        self,
        registered_model: str,
        model_sha: str,
        run_id: str,
        tags: Mapping[str, str],
        grid: dict[str, Any],
        wanted: Mapping[str, str],
    ) -> Optional[tuple[str, dict[str, str], dict[str, str]]]:
        """What the evaluate stage (run ``run_id``) tells the registry about the version serving the model file
        whose sha256 is ``model_sha``: ``tags`` on it, the ``grid`` (a :func:`table`) beside the served model,
        and the aliases ``wanted`` offered (:meth:`offer_aliases`). Returns (version, aliases set, aliases kept);
        None when no version serves that file (the train stage registered none) or while the store does not answer."""
        version = self._version_of(registered_model, model_sha)
        if version is None:
            return None
        self.tag_model_version(registered_model, version, {**tags, "adaskip.evaluate_run": run_id})
        self.attach_to_model(registered_model, version, {GRID_FILE: pd.DataFrame(**grid)})
        return (version, *self.offer_aliases(registered_model, version, wanted))

    def promote(self, registered_model: str, version: str, only: Optional[list[str]] = None) -> dict[str, str]:
        """Point the aliases evaluate offered ``version`` (its candidate tags; ``only``: some of them) at it. Returns
        alias -> the version now serving it; a version evaluate never offered aliases is a TrackingError."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_model_version(registered_model, version).tags
        except MlflowException as e:
            raise TrackingError(f"{registered_model} version {version}: {e.message.splitlines()[0][:200]}") from None
        offered = {k.removeprefix(CANDIDATE_TAG): v for k, v in tags.items() if k.startswith(CANDIDATE_TAG)}
        if not offered:
            raise TrackingError(
                f"{registered_model} version {version} was never evaluated (no {CANDIDATE_TAG}* tags): run the "
                "evaluate stage on it first, or promote the version it registered"
            )
        unknown = sorted(set(only or ()) - set(offered))
        if unknown:
            raise TrackingError(f"version {version} offers no alias {unknown}; it offers {sorted(offered)}")
        chosen = {a: s for a, s in offered.items() if a in (only or offered)}
        return {a: self.set_alias(registered_model, version, a, s) for a, s in chosen.items()}

    def download_model(self, uri: str) -> tuple[Path, Optional[tuple[str, str]]]:
        """The model file of MLflow Model ``uri`` (``models:/adaskip/3``, ``models:/adaskip@base``) downloaded from
        this store, and the registered (name, version) it resolved to."""
        import mlflow.artifacts
        import yaml
        from mlflow.exceptions import MlflowException
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        try:  # models:/ resolves through the process-wide registry URI, which follows the tracking URI set here
            with _use_tracking_uri(self.uri):
                root = Path(mlflow.artifacts.download_artifacts(uri))
        except MlflowException as e:
            raise TrackingError(f"cannot download {uri} from {self.uri}: {e.message.splitlines()[0][:300]}") from None
        meta = root / "registered_model_meta"
        info = yaml.safe_load(meta.read_text()) if meta.is_file() else None
        return root / "artifacts" / "model.pt", info and (info["model_name"], str(info["model_version"]))


@contextlib.contextmanager
def _quiet_model_logging() -> Iterator[None]:
    """Logging an MLflow Model prints hints (type hints, input example, integer columns, CloudPickle), an artifact
    download bar and "Successfully registered ..." lines, none of which a run can act on (its signature is explicit,
    the version is in the stage's summary): left out unless ADASKIP_VERBOSE=1. Errors still raise."""
    if verbose():
        yield
        return
    import io

    pyfunc, level = logging.getLogger("mlflow.pyfunc"), logging.getLogger("mlflow.pyfunc").level
    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    pyfunc.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        pyfunc.setLevel(level)
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved


def logged_model_id(source: str) -> Optional[str]:
    """The MLflow 3 logged model (``m-...``) a model version's ``models:/m-...`` source names, else None."""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None
