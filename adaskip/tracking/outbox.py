"""Records for MLflow that never hold up training: kept in order, sent by a background thread whenever the tracking
store answers, and handed on (``pending``) to be kept with a checkpoint, so that a restarted worker group sends what
its predecessor could not. Each record keeps the time it was made, not the time it was sent.

A run created while the store does not answer has a placeholder id (``pending-<hex>``) until it is sent; any outbox,
in any process, that meets the placeholder finds the real run by its ``adaskip.pending_id`` tag. What a finished
stage could not send is spooled to the run storage's ``pending/`` folder, the files it names with it, and sent by
:func:`sync` (``adaskip sync``, and every stage as it starts)."""

from __future__ import annotations

import collections
import functools
import inspect
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar

from .uri import TrackingError, check_reachable

log = logging.getLogger("adaskip.tracking")
# {"kind": "metrics" | "union_tag" | "call", "run": run_id, ...}: plain data (a checkpoint and the spool keep it)
Record = dict[str, Any]
WAIT_ENV = "ADASKIP_TRACKING_WAIT_S"  # how long a finished run waits for its records to be sent (default 300 s)
PENDING, PENDING_TAG = "pending-", "adaskip.pending_id"  # a run's placeholder id, and the tag that finds it once sent
SPOOL = "pending"  # in the run storage: one folder per stage that ended with records not sent


def made_run(client, experiment_id: str, pending: str) -> Optional[str]:
    """The id of the run made for placeholder ``pending`` (found by its tag), or None if it is not made yet."""
    found = client.search_runs([experiment_id], f"tags.`{PENDING_TAG}` = '{pending}'", max_results=1)
    return found[0].info.run_id if found else None


class NotYet(Exception):
    """A record names a run that another process has not created yet: sent later, like a store that is down."""


def down(e: BaseException) -> bool:
    """The store did not answer (or not well): a record is worth sending again, as opposed to one it refused."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        status = e.get_http_status_code()
        return not (400 <= status < 500 and status != 429)
    return isinstance(e, (TrackingError, OSError, NotYet))  # requests' errors are OSErrors


class Outbox:
    """An ordered queue of MLflow records for one tracking store and its sender thread. ``put`` never blocks and
    never raises; the store being down shows as one log line when it stops answering and one when it is back.
    ``execute`` sends a ``call`` record (a Tracker method by name); ``experiment`` finds placeholder runs."""

    def __init__(
        self,
        uri: str,
        records: Iterable[Record] = (),
        retry: tuple[float, float] = (1.0, 30.0),
        experiment: Optional[str] = None,
        execute: Optional[Callable[[Record], Any]] = None,
    ) -> None:
        self.uri, self.experiment, self._execute = uri, experiment, execute
        # records handed on from a checkpoint may have been sent after it was taken: a duplicate of one is expected
        self._queue: collections.deque[Record] = collections.deque({**r, "resent": True} for r in records)
        self._cv = threading.Condition()
        self._retry = retry
        self._logged: dict[tuple[str, str], set[int]] = {}  # (run, key) -> steps the store has: each epoch once
        self._ids: dict[str, str] = {}  # placeholder -> the run id the store gave
        self._client = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mlflow-outbox", daemon=True)
        self._thread.start()

    def metrics(self, run_id: str, metrics: Mapping[str, float], step: int, once: Optional[str] = None) -> None:
        """``metrics`` at ``step``, stamped now; ``once``: a key whose step, if the store has it already (an epoch
        trained again after a restart), makes this record a no-op, so each step is logged once."""
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.put({"kind": "metrics", "run": run_id, "metrics": values, "step": int(step), "time": _now(), "once": once})

    def union_tag(self, run_id: str, key: str, values: Iterable[str]) -> None:
        """Add ``values`` to the comma-separated set in tag ``key`` (read and written when sent)."""
        self.put({"kind": "union_tag", "run": run_id, "key": key, "values": sorted(set(values))})

    def put(self, *records: Record) -> None:
        with self._cv:
            self._queue.extend(records)
            self._cv.notify()

    def idle(self) -> bool:
        """Nothing waits: a caller may talk to the store directly without passing a record queued before."""
        with self._cv:
            return not self._queue

    def sending(self) -> bool:
        """Whether this is the sender thread (a record being sent may make calls of its own, sent at once)."""
        return threading.current_thread() is self._thread

    def pending(self) -> list[Record]:
        """The records not sent yet, in order (the one being sent included): what a checkpoint keeps."""
        with self._cv:
            return [dict(r) for r in self._queue]

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every record to be sent; returns how many are still waiting."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue and time.monotonic() < deadline and self._thread.is_alive():
                self._cv.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            return len(self._queue)

    def finish(self, wait: Optional[float] = None) -> list[Record]:
        """Wait up to ``wait`` seconds (default ``ADASKIP_TRACKING_WAIT_S``, 300) for the records to be sent, then
        stop the sender; returns those not sent, in order."""
        self.drain(float(os.environ.get(WAIT_ENV, 300)) if wait is None else wait)
        self.close()
        return self.pending()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if not self.sending():
            self._thread.join(timeout=10)  # a send under way ends first: what pending() says then is what is left

    def resolve(self, value: Any) -> Any:
        """``value`` with every placeholder run id replaced by the id the store gave (``NotYet`` if none yet)."""
        if isinstance(value, str) and value.startswith(PENDING):
            if value not in self._ids:
                found = made_run(self._mlflow(), self._experiment_id(), value)
                if found is None:
                    raise NotYet(f"run {value} is not created yet")
                self._ids[value] = found
            return self._ids[value]
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.resolve(v) for v in value]
        return value

    def _run(self) -> None:
        down_since, delay = None, self._retry[0]
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                record = self._queue[0]
            try:
                self._send(record)
            except Exception as e:  # noqa: BLE001  (whatever the store or network raised: wait and try again)
                if not down(e):  # the store answered no (a run deleted, a bad value): sending again cannot help
                    log.warning("MLflow refused a record of run %s, left out: %s", record.get("run"), _first_line(e))
                    self._done()
                    continue
                if down_since is None and not isinstance(e, NotYet):
                    down_since = time.monotonic()
                    log.warning(
                        "MLflow at %s stopped answering; training goes on, its records wait and are sent when it is "
                        "back [%s]",
                        self.uri,
                        _first_line(e).split("; ")[0],  # not the start-up hint of check_reachable's message
                    )
                with self._cv:
                    self._cv.wait_for(lambda: self._closed, timeout=delay)
                delay = min(delay * 2, self._retry[1])
                continue
            left = self._done()
            if down_since is not None:
                log.warning(
                    "MLflow at %s is back after %.0f s: the waiting records are being sent (%d left)",
                    self.uri,
                    time.monotonic() - down_since,
                    left,
                )
                down_since = None
            delay = self._retry[0]

    def _done(self) -> int:
        with self._cv:
            self._queue.popleft()
            self._cv.notify_all()
            return len(self._queue)

    def _send(self, record: Record) -> None:
        # a server that does not answer its health check is down: asked through MLflow's client, which retries a
        # refused connection for about two minutes and warns at each try, the outbox would hear so much later
        check_reachable(self.uri, timeout=3.0)
        if record["kind"] == "call":
            if self._execute is None:
                raise ValueError(f"no Tracker here to send a {record['method']} call")
            args, kwargs = self.resolve(record["args"]), self.resolve(record["kwargs"])
            result = self._execute({**record, "args": args, "kwargs": kwargs})
            if record.get("pending_id"):
                self._ids[record["pending_id"]] = result
            return
        client, run = self._mlflow(), self.resolve(record["run"])
        if record["kind"] == "union_tag":
            have = client.get_run(run).data.tags.get(record["key"], "")
            merged = set(filter(None, have.split(","))) | set(record["values"])
            client.set_tag(run, record["key"], ",".join(sorted(merged)))
        elif record["kind"] == "metrics":
            self._log_metrics(client, run, record)
        else:
            raise ValueError(f"unknown outbox record {record['kind']!r}")

    def _log_metrics(self, client, run: str, record: Record) -> None:
        from mlflow.entities import Metric

        once, step = record.get("once"), record["step"]
        if once:
            logged = self._logged.get((run, once))
            if logged is None:
                logged = self._logged[(run, once)] = {m.step for m in client.get_metric_history(run, once)}
            if step in logged:
                if not record.get("resent"):  # a new record for a logged step: the epoch was trained again
                    log.info("epoch %d trained again after a restart; its metrics were logged before", step)
                    client.set_tag(run, "adaskip.retrained_epoch", str(step))
                return
        client.log_batch(run, metrics=[Metric(k, v, record["time"], step) for k, v in record["metrics"].items()])
        if once:
            logged.add(step)

    def _experiment_id(self) -> str:
        exp = self._mlflow().get_experiment_by_name(self.experiment or "")
        if exp is None:
            raise NotYet(f"experiment {self.experiment!r} is not created yet")
        return exp.experiment_id

    def _mlflow(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client


def spool(store: Any, head: Mapping[str, Any], records: list[Record]) -> str:
    """Keep ``records`` in ``store``'s (a :class:`~adaskip.orchestration.storage.Storage`) ``pending/<id>/``, with
    the files their calls name (``record["files"]``: argument -> local path). Returns the folder's name."""
    name = f"{SPOOL}/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    kept = []
    for i, r in enumerate(records):
        for arg, path in (r.get("files") or {}).items():
            target = f"files/{i}-{arg}/{Path(path).name}"
            store.write_bytes(f"{name}/{target}", Path(path).read_bytes())
            r = {**r, "files": {**r["files"], arg: target}}
        kept.append(r)
    # written last: a folder without it (a stage killed while spooling) is not sent, and sync says so
    store.write_bytes(f"{name}/records.json", as_json({**head, "records": kept}))
    return name


def unspool(store: Any, name: str, into: Path) -> tuple[dict[str, Any], list[Record]]:
    """The head and records kept in ``store``'s ``name`` folder, their files downloaded under ``into``."""
    blob = json.loads(store.read_bytes(f"{name}/records.json"))
    records = []
    for r in blob.pop("records"):
        for arg, target in (r.get("files") or {}).items():
            local = into / name / target
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(store.read_bytes(f"{name}/{target}"))
            r["kwargs"][arg] = str(local)
        records.append(r)
    return blob, records


def spooled(store: Any) -> list[str]:
    """The spool folders in ``store``, oldest first."""
    return sorted(f"{SPOOL}/{n}" for n in store.list(SPOOL))


def as_json(obj: Any) -> bytes:
    return json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)).encode()  # numpy scalars


def _now() -> int:
    return int(time.time() * 1000)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


F = TypeVar("F", bound=Callable[..., Any])


def deferrable(method: Optional[F] = None, *, files: tuple[str, ...] = ()) -> Any:
    """A write to the store: done at once while the store answers, else queued in the Tracker's outbox (its value
    then None, or a placeholder run id for ``start_run``), its arguments plain data (``files``: those naming a local
    file, kept with the records). An ``at`` argument is stamped with the time of the call."""
    if method is None:
        return functools.partial(deferrable, files=files)
    sig = inspect.signature(method)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        named = sig.bind(self, *args, **kwargs).arguments
        named.pop("self")
        if "at" in sig.parameters and named.get("at") is None:
            named["at"] = int(time.time() * 1000)
        return self._write(method, named, files)

    return call


def answered(default: Any) -> Callable[[F], F]:
    """A read from the store: ``default`` (unknown) while the store does not answer or records wait to be sent."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.outbox.sending():
                return method(self, *args, **kwargs)
            if not self.outbox.idle() or any(isinstance(a, str) and a.startswith(PENDING) for a in args):
                return default
            try:
                check_reachable(self.uri, timeout=3.0)
                return method(self, *args, **kwargs)
            except Exception as e:
                if not down(e):
                    raise
                log.debug("MLflow did not answer %s: %s", method.__name__, e)
                return default

        return call  # type: ignore[return-value]

    return wrap
