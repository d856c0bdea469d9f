"""The Tracker: one experiment in one tracking store, by explicit run ids (MlflowClient, no global active run), so
Ray workers and restarted worker groups continue the same run instead of opening new ones; and the Model Registry
entries of the adaptive network (versions, attached tables, aliases)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import pandas as pd

from .outbox import (
    PENDING,
    PENDING_TAG,
    Outbox,
    Record,
    answered,
    as_json,
    deferrable,
    down,
    made_run,
    spool,
    spooled,
    unspool,
)
from .registry import Registry
from .tags import EXPERIMENT_KIND
from .uri import TrackingError, check_reachable
from .views import GROUP_TAG, run_url, ui_base

log = logging.getLogger("adaskip.tracking")
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
# MLflow 3's experiment kind: model training opens the UI on the runs table (not the GenAI traces overview)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"alpha": 0.5}}`` -> ``{"train.alpha": 0.5}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, Mapping) and v else {key: v})
    return out


def provenance_tags() -> dict[str, str]:
    """DVC experiment/stage and git commit of this run, when known."""
    tags = {k.lower(): os.environ[k] for k in ("DVC_EXP_NAME", "DVC_STAGE") if os.environ.get(k)}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        tags["git_sha"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    return tags


def load_table(uri: str, run_id: str, name: str) -> pd.DataFrame:
    """The table ``name`` (``eval_grid.json``) that :meth:`Tracker.log_table` logged to run ``run_id``; a missing
    run or table is one TrackingError line."""

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = MlflowClient(tracking_uri=uri).download_artifacts(run_id, name, tmp)
            return pd.read_json(path, orient="split", dtype={"skip": str})
    except (MlflowException, OSError, ValueError) as e:
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        raise TrackingError(f"run {run_id} in {uri}: cannot load its table {name} ({lines[0][:200]})") from None


class Tracker(Registry):
    """A thin handle on one experiment in one tracking store. Its writes never fail or wait on a store that stopped
    answering once it had answered: they queue in ``outbox`` (:func:`deferrable`), and what a stage could not send
    by its end is kept in the run storage by :meth:`close`."""

    def __init__(
        self, uri: str, experiment: str, group: Optional[str] = None, experiment_id: Optional[str] = None
    ) -> None:
        """``group``: the DVC experiment (:func:`.views.experiment_label`) every run started here is tagged with;
        ``experiment_id``: known already (a trial of a stage, which asked the store): the store is not asked."""
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.experiment = experiment
        self.group = group
        self.client = MlflowClient(tracking_uri=uri)
        self.outbox = Outbox(uri, experiment=experiment, execute=self._execute)
        if experiment_id is not None:
            self.experiment_id = experiment_id
            return
        check_reachable(uri)  # a stage's start: a store never reached (a mistyped URI) stops it in seconds
        exp = self.client.get_experiment_by_name(experiment)
        key, kind = EXPERIMENT_KIND
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, tags={key: kind})
        else:
            self.experiment_id = exp.experiment_id
            if key not in exp.tags:  # an experiment created before: a user's own kind is kept
                self.client.set_experiment_tag(self.experiment_id, key, kind)

    def _write(self, method: Callable[..., Any], kwargs: dict[str, Any], files: tuple[str, ...]) -> Any:
        if self.outbox.sending():  # a queued call's own calls
            return method(self, **kwargs)
        if self.outbox.idle():
            try:
                check_reachable(self.uri, timeout=3.0)
                return method(self, **self.outbox.resolve(kwargs))
            except Exception as e:
                if not down(e):
                    raise
        record: Record = {"kind": "call", "method": method.__name__, "args": [], "kwargs": kwargs}
        record["files"] = {a: str(Path(kwargs[a]).resolve()) for a in files if kwargs.get(a)}
        if method.__name__ == "start_run":  # its id, until the store gives one: found by its tag by any process
            record["pending_id"] = pending = f"{PENDING}{uuid.uuid4().hex}"
            self.outbox.put(record)
            return pending
        self.outbox.put(record)
        return None

    def _execute(self, record: Record) -> Any:
        """Send a queued call: the method itself (not its deferring wrapper)."""
        method = getattr(type(self), record["method"]).__wrapped__
        kwargs, pending = record["kwargs"], record.get("pending_id")
        if pending:  # a run made while the store did not answer: tagged, so that any process finds it
            if found := made_run(self.client, self.experiment_id, pending):  # sent before, its answer lost
                return found
            kwargs = {**kwargs, "tags": {**(kwargs.get("tags") or {}), PENDING_TAG: pending}}
        return method(self, *record["args"], **kwargs)

    def hand_on(self, records: list[Record]) -> None:
        """Send ``records`` another outbox could not (a worker group's, kept in its last checkpoint) after those
        queued here; a duplicate of one it did send is expected and skipped."""
        self.outbox.put(*({**r, "resent": True} for r in records))

    def waiting(self) -> int:
        """How many records wait to be sent."""
        return len(self.outbox.pending())

    def close(self, store: Any, wait: Optional[float] = None) -> int:
        """Wait up to ``wait`` seconds (``ADASKIP_TRACKING_WAIT_S``, 300) for the records to be sent, then keep what
        is left in ``store``'s ``pending/`` (a :class:`~adaskip.orchestration.storage.Storage`), and say so once.
        Returns how many records were kept."""
        left = self.outbox.finish(wait)
        if left:
            head = {"uri": self.uri, "experiment": self.experiment, "experiment_id": self.experiment_id}
            where = spool(store, {**head, "group": self.group}, left)
            log.warning(
                "%d MLflow record(s) wait: %s did not answer; kept in %s/%s, sent by `adaskip sync` (every stage "
                "runs it as it starts) once it answers",
                len(left),
                self.uri,
                store,
                where,
            )
        return len(left)

    @deferrable
    def start_run(
        self,
        name: str,
        tags: Optional[Mapping[str, str]] = None,
        parent_run_id: Optional[str] = None,
        at: Optional[int] = None,
    ) -> str:
        tags = {**provenance_tags(), **({GROUP_TAG: self.group} if self.group else {}), **(tags or {})}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        return self.client.create_run(self.experiment_id, start_time=at, run_name=name, tags=tags).info.run_id

    @deferrable
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    @deferrable
    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: Optional[int] = None, at: Optional[int] = None
    ) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), at, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        self.client.log_batch(run_id, metrics=items)

    @deferrable
    def log_curve(self, run_id: str, key: str, steps: list[tuple[int, float]], at: Optional[int] = None) -> None:
        """A curve as one metric's history: ``value`` at ``step`` each (:func:`.views.curve_steps`); logged again
        (a resumed run), the old points are kept, not doubled."""
        from mlflow.entities import Metric

        done = self.logged_steps(run_id, key)
        items = [Metric(key, v, at, step) for step, v in steps if step not in done]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    @deferrable
    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which ``key`` was logged in the run."""
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    @deferrable(files=("path",))
    def log_artifact(self, run_id: str, path: str | os.PathLike, folder: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_table(self, run_id: str, df: pd.DataFrame, name: str) -> None:
        self._log_table(run_id, table(df), name)

    @deferrable
    def _log_table(self, run_id: str, table: dict[str, Any], name: str) -> None:
        self.client.log_table(run_id, data=pd.DataFrame(**table), artifact_file=name)

    @deferrable
    def log_dict(self, run_id: str, obj: Any, name: str) -> None:
        self.client.log_dict(run_id, obj, name)

    @deferrable
    def end_run(self, run_id: str, status: str = FINISHED, at: Optional[int] = None) -> None:
        self.client.set_terminated(run_id, status, end_time=at)

    @answered(None)
    def status(self, run_id: str) -> Optional[str]:
        """The run's status (None: unknown, the store not answering)."""
        return self.client.get_run(run_id).info.status

    def reopen(self, run_id: str) -> str:
        """Mark a continued run (interrupted: KILLED or FAILED) RUNNING again, so it ends with its real verdict."""
        self._reopen(run_id)
        return run_id

    @deferrable
    def _reopen(self, run_id: str) -> None:
        if self.client.get_run(run_id).info.status != RUNNING:
            self.client.update_run(run_id, status=RUNNING)

    @answered(None)
    def find_run(self, tags: Mapping[str, str], parent_run_id: Optional[str] = None) -> Optional[str]:
        """The newest run with these tags (to continue an interrupted run instead of duplicating it); None also
        while the store does not answer (a new run is started then)."""
        clauses = [f"tags.{k} = '{v}'" for k, v in tags.items()]
        if parent_run_id:
            clauses.append(f"tags.mlflow.parentRunId = '{parent_run_id}'")
        runs = self.client.search_runs(
            [self.experiment_id], " and ".join(clauses), max_results=1, order_by=["attributes.start_time DESC"]
        )
        return runs[0].info.run_id if runs else None

    def unfinished_run(self, tags: Mapping[str, str], parent_run_id: Optional[str] = None) -> Optional[str]:
        """The newest run with these tags (under ``parent_run_id``) unless it FINISHED: an interrupted stage or
        cell continues it, a finished one is not reopened."""
        run_id = self.find_run(tags, parent_run_id)
        return run_id if run_id and self.status(run_id) != FINISHED else None

    @answered([])
    def children(self, parent_run_id: str) -> list:
        return self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000
        )

    @deferrable
    def end_leftovers(self, parent_run_id: str, status: str = KILLED) -> None:
        """Mark children still RUNNING (their process died or was stopped early) as ended."""
        for r in self.children(parent_run_id):
            if r.info.status == RUNNING:
                self.end_run(r.info.run_id, status)

    @deferrable
    def end_found(self, tags: Mapping[str, str], parent_run_id: str, status: str, verdict: Mapping[str, Any]) -> None:
        """End the newest run with ``tags`` under ``parent_run_id`` with ``status``, tagged ``verdict``, unless it
        ended FINISHED or FAILED already (its own process did)."""
        run_id = self.find_run(tags, parent_run_id)
        if run_id is not None and self.status(run_id) not in (FINISHED, FAILED):
            self.set_tags(run_id, verdict)
            self.end_run(run_id, status)

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        tags: Optional[Mapping[str, str]] = None,
        parent_run_id: Optional[str] = None,
        run_id: Optional[str] = None,
    ) -> Iterator[str]:
        """A run that always ends: FINISHED, FAILED on error, KILLED on Ctrl-C/SIGTERM."""
        run_id = self.reopen(run_id) if run_id else self.start_run(name, tags, parent_run_id)
        try:
            yield run_id
        except (KeyboardInterrupt, SystemExit):
            self.end_run(run_id, KILLED)
            raise
        except BaseException:
            self.end_run(run_id, FAILED)
            raise
        else:
            self.end_run(run_id, FINISHED)
            if parent_run_id is None and self.uri.startswith(("http://", "https://")) and self.outbox.idle():
                log.info("MLflow run %s: %s", name, run_url(ui_base(self.uri), self.experiment_id, run_id))

    @deferrable
    def log_dataset(self, run_id: str, data: Mapping[str, Any], context: str) -> None:
        """Log the data set as the run's input: a one-row descriptor table (``data`` params: name, path, image size,
        split fractions, seed) named ``data["name"]``, its digest a hash of the descriptor; ``context``: training or
        evaluation."""
        import hashlib
        import json

        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        row = {k: v for k, v in flatten(data).items() if k != "workers"}  # loader processes: not the data
        blob = json.dumps(row, sort_keys=True, default=str)
        df = pd.DataFrame([{k: ("" if v is None else v) for k, v in row.items()}])
        name = str(data.get("name") or "data")
        source = str(Path(data["path"]).resolve()) if data.get("path") else None  # None: a code source
        with warnings.catch_warnings():  # "integer columns cannot represent missing values": a descriptor has none;
            warnings.simplefilter("ignore", UserWarning)  # "the source can be interpreted in multiple ways"
            ds = mlflow.data.from_pandas(
                df, source=source, name=name, digest=hashlib.sha256(blob.encode()).hexdigest()[:8]
            )
            entity = ds._to_mlflow_entity()  # infers the schema: the integer-columns hint comes from here
        self.client.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])


def table(df: pd.DataFrame) -> dict[str, Any]:
    """``df`` as plain data (a queued record's argument), every value exact: ``pd.DataFrame(**table)`` makes it
    again."""
    split = df.to_dict(orient="split", index=False)  # Python scalars, not numpy's
    return {"data": split["data"], "columns": split["columns"]}


def skip_params(skip: str) -> dict[str, str]:
    """A sub-network's params: ``skip`` and one ``skip_stage<i>`` = true/false per stage (plottable per stage)."""
    return {"skip": skip, **{f"skip_stage{i}": str(c == "T").lower() for i, c in enumerate(skip, 1)}}


def pareto_tags(grid: pd.DataFrame) -> dict[str, str]:
    """The Pareto configurations as one compact tag, ``pareto`` = "TTTT:97.0@5.38M,..." (top-1 @ MACs, by MACs): one
    line in the registry's version list (every figure is in the grid attached beside the model)."""
    front = grid[grid["pareto"].astype(str).str.lower() == "true"].sort_values("macs")
    return {"pareto": ",".join(f"{r.skip}:{r.acc1:.1f}@{r.macs / 1e6:.3g}M" for r in front.itertuples())}


def sync(store: Any, wait: Optional[float] = None) -> tuple[int, int]:
    """Send what stages spooled in ``store`` to the tracking stores they were meant for, oldest first; a folder is
    removed once everything in it is sent. Returns (records sent, records still waiting)."""
    sent = left = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in spooled(store):
            if not store.exists(f"{name}/records.json"):
                log.warning("%s/%s is incomplete (its stage stopped while keeping it): left there", store, name)
                continue
            head, records = unspool(store, name, Path(tmp))
            try:
                check_reachable(head["uri"], timeout=3.0)
            except TrackingError:
                left += len(records)
                log.warning("%s/%s: %s does not answer; its records wait", store, name, head["uri"])
                break  # later folders follow these in time: sent after them
            tracker = Tracker(head["uri"], head["experiment"], head.get("group"), head["experiment_id"])
            tracker.outbox.put(*({**r, "resent": True} for r in records))
            still = tracker.outbox.finish(wait)
            if still:  # kept for the next try, without those sent (a model is registered once)
                store.write_bytes(f"{name}/records.json", as_json({**head, "records": still}))
                left += len(still)
                sent += len(records) - len(still)
                break  # later folders follow these in time: sent after them
            store.remove(name)
            sent += len(records)
    return sent, left
