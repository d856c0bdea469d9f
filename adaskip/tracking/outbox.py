"""Records for MLflow that never hold up training: kept in order, sent by a background thread whenever the tracking
store answers, and handed on (``pending``) to be kept with a checkpoint, so that a restarted worker group sends what
its predecessor could not. Each metric keeps the time it was made, not the time it was sent."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any, Iterable, Mapping, Optional

from .uri import check_reachable

log = logging.getLogger("adaskip.tracking")
Record = dict[str, Any]  # {"kind": "metrics" | "union_tag", "run": run_id, ...}: plain data (a checkpoint keeps it)
WAIT_ENV = "ADASKIP_TRACKING_WAIT_S"  # how long a finished run waits for its records to be sent (default 300 s)


class Outbox:
    """An ordered queue of MLflow records for one tracking store and its sender thread. ``put`` never blocks and
    never raises; the store being down shows as one log line when it stops answering and one when it is back."""

    def __init__(self, uri: str, records: Iterable[Record] = (), retry: tuple[float, float] = (1.0, 30.0)) -> None:
        self.uri = uri
        # records handed on from a checkpoint may have been sent after it was taken: a duplicate of one is expected
        self._queue: collections.deque[Record] = collections.deque({**r, "resent": True} for r in records)
        self._cv = threading.Condition()
        self._retry = retry
        self._logged: dict[tuple[str, str], set[int]] = {}  # (run, key) -> steps the store has: each epoch once
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

    def put(self, record: Record) -> None:
        with self._cv:
            self._queue.append(record)
            self._cv.notify()

    def pending(self) -> list[Record]:
        """The records not sent yet, in order (the one being sent included): what a checkpoint keeps."""
        with self._cv:
            return [dict(r) for r in self._queue]

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every record to be sent; returns how many are still waiting."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue and time.monotonic() < deadline:
                self._cv.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            return len(self._queue)

    def finish(self) -> int:
        """Wait up to ``ADASKIP_TRACKING_WAIT_S`` (300 s) for the records to be sent, then stop the sender; returns how
        many could not be sent."""
        left = self.drain(float(os.environ.get(WAIT_ENV, 300)))
        self.close()
        return left

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _run(self) -> None:
        down_since, delay = None, self._retry[0]
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed and not self._queue:
                    return
                record = self._queue[0]
            try:
                self._send(record)
            except Exception as e:  # noqa: BLE001  (whatever the store or network raised: wait and try again)
                if _refused(e):  # the store answered no (a run deleted, a bad value): sending again cannot help
                    log.warning("MLflow refused a record of run %s, left out: %s", record.get("run"), _first_line(e))
                    with self._cv:
                        self._queue.popleft()
                        self._cv.notify_all()
                    continue
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "MLflow at %s stopped answering; training goes on, its records wait and are sent when it is "
                        "back [%s]",
                        self.uri,
                        _first_line(e).split("; ")[0],  # not the start-up hint of check_reachable's message
                    )
                time.sleep(delay)
                delay = min(delay * 2, self._retry[1])
                continue
            with self._cv:
                self._queue.popleft()
                self._cv.notify_all()
            if down_since is not None:
                log.warning(
                    "MLflow at %s is back after %.0f s: the waiting records are being sent (%d left)",
                    self.uri,
                    time.monotonic() - down_since,
                    len(self._queue),
                )
                down_since, delay = None, self._retry[0]

    def _send(self, record: Record) -> None:
        from mlflow.entities import Metric

        # a server that does not answer its health check is down: asked through MLflow's client, which retries a
        # refused connection for about two minutes and warns at each try, the outbox would hear so much later
        check_reachable(self.uri, timeout=3.0)
        client = self._mlflow()
        run = record["run"]
        if record["kind"] == "union_tag":
            have = client.get_run(run).data.tags.get(record["key"], "")
            merged = set(filter(None, have.split(","))) | set(record["values"])
            client.set_tag(run, record["key"], ",".join(sorted(merged)))
        elif record["kind"] == "metrics":
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
            items = [Metric(k, v, record["time"], step) for k, v in record["metrics"].items()]
            client.log_batch(run, metrics=items)
            if once:
                logged.add(step)
        else:
            raise ValueError(f"unknown outbox record {record['kind']!r}")

    def _mlflow(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client


def _now() -> int:
    return int(time.time() * 1000)


def _refused(e: BaseException) -> bool:
    """The store's own answer to a bad request (HTTP 4xx but 429), as opposed to a store that does not answer."""
    from mlflow.exceptions import MlflowException

    status = e.get_http_status_code() if isinstance(e, MlflowException) else 500
    return 400 <= status < 500 and status != 429


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
