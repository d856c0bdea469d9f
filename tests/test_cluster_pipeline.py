"""The whole pipeline on a real two-host Ray cluster (tests/multihost.py), following README "Scaling out": an MLflow
tracking server with PostgreSQL on the head host (credentials required), a shared folder as storage (NFS; the S3
path is covered by tests/test_storage.py against an S3 API server), `adaskip doctor`, then `dvc repro` of the
default pipeline and a 2-variant x 2-seed study from the head host. Root only; `make test-cluster`."""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import checkpoint_recorded
from multihost import TwoHosts, two_hosts  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.subprocess]
USER, PASSWORD = "adaskip", "cluster-test-password-1"  # MLflow wants 12+ characters
STUDY = {"name": "cluster", "seeds": [0, 1], "epochs": 2, "reference": "adn", "cpus_per_cell": 1,
         "variants": {"adn": {}, "individual_full": {"baseline": "super"}}}

# Run on host1 (the only place that reaches the server): every run of the experiment with its status and tags, the
# epochs logged per train run, the node ids of the cluster, and the model artifact of the newest train run.
INSPECT = r"""
import json, sys, ray
from mlflow.tracking import MlflowClient
c = MlflowClient()
exp = c.get_experiment_by_name("adaskip")
runs = c.search_runs([exp.experiment_id], max_results=1000)
out = {"runs": [{"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "tags": r.data.tags,
                 "artifact_uri": r.info.artifact_uri} for r in runs], "epochs": {}}
for r in runs:
    if r.data.tags.get("adaskip.stage") == "train":
        out["epochs"][r.info.run_id] = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acc_super"))
train = [r for r in runs if r.data.tags.get("adaskip.stage") == "train"]
if train:
    out["artifact"] = c.download_artifacts(train[0].info.run_id, "model/model.pt", sys.argv[1])
ray.init(logging_level="ERROR")
out["nodes"] = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
print("RESULT " + json.dumps(out))
"""


def _result(proc) -> dict:
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(line[len("RESULT "):])


def _watch_checkpoints(root: Path, seen: set[str], stop: threading.Event) -> None:
    """Record every Ray Train checkpoint folder that appears in the shared storage (the stage deletes them once
    the model file is written)."""
    while not stop.is_set():
        seen.update(str(p.relative_to(root)) for p in root.glob("train-*/checkpoint_*"))
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(two_hosts: TwoHosts):
    """The tracking server on host1 and the environment of a driver there (README "Scaling out", steps 1-3)."""
    th = two_hosts
    creds = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    server = th.host1_popen(["python", "-m", "adaskip.tracking.server", "--host", th.host1.ip, "--port", "5000",
                             "--state", str(th.root / "mlflow")], env=creds, stdout=-1, stderr=-1, text=True)
    uri = f"http://{th.host1.ip}:5000"
    ready = th.host1_run(["python", "-c", f"import urllib.request, time\nfor _ in range(240):\n    try:\n"
                          f"        urllib.request.urlopen('{uri}/health', timeout=1); break\n"
                          f"    except OSError: time.sleep(0.5)\nelse: raise SystemExit('no server')"], timeout=180)
    assert ready.returncode == 0, server.stderr.read() if server.poll() is not None else ready.stderr
    env = {"MLFLOW_TRACKING_URI": uri, **creds, "ADASKIP_STORAGE": str(th.shared / "ray")}
    for f, text in (("params.yaml", None), ("studies/ablation/study.yaml", yaml.safe_dump(STUDY))):
        for project in (th.project, th.host2_project):  # the same checkout on every node
            if text is None:  # spread the two DDP workers over both hosts
                raw = yaml.safe_load((project / f).read_text())
                raw["train"]["placement"] = "spread"
                text = yaml.safe_dump(raw, sort_keys=False)
            (project / f).write_text(text)
    yield th, env
    server.terminate()
    server.wait(timeout=60)


def test_local_defaults_stop_in_seconds_with_the_preflight_message(cluster):
    th, _ = cluster
    start = time.time()
    r = th.host1_run(["python", "pipelines/tune.py"], timeout=300)  # the first stage that joins the cluster
    took = time.time() - start
    print(f"tune with local storage and tracking on the cluster: exit {r.returncode} after {took:.1f} s")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-4000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("error: preflight", f"node {th.host2.ip}"))]
    assert lines[0].startswith("error: preflight: 1 of 2 node(s) cannot run this pipeline"), r.stderr[-3000:]
    assert "does not hold the file the driver just wrote" in lines[1] and "is a file on the driver's host" in lines[1]
    assert "Traceback" not in r.stderr and took < 90
    assert not (th.project / "results" / "best_config.json").exists()


def test_doctor_passes_with_the_guide_settings(cluster):
    th, env = cluster
    r = th.host1_run(["adaskip", "doctor"], env=env, timeout=300)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "2 node(s) of the cluster at RAY_ADDRESS" in r.stdout and r.stdout.count(": ok") == 2
    r = th.host1_run(["adaskip", "doctor"], env={**env, "MLFLOW_TRACKING_PASSWORD": "wrong-password-123"}, timeout=300)
    assert r.returncode == 1 and r.stdout.count("refused this client's credentials") == 2, r.stdout + r.stderr[-2000:]


def test_clients_without_credentials_or_token_are_refused(cluster):
    th, env = cluster
    uri = env["MLFLOW_TRACKING_URI"]
    r = th.host2_run(["python", "-c", f"from mlflow.tracking import MlflowClient\n"
                      f"MlflowClient('{uri}').search_experiments()"], timeout=120)
    assert r.returncode != 0 and "401" in r.stderr, r.stderr[-2000:]
    r = th.host2_run(["python", "-c", "import ray; ray.init(); print('CONNECTED')"], env={"RAY_AUTH_TOKEN": None},
                     timeout=120)
    assert r.returncode != 0 and "CONNECTED" not in r.stdout


@pytest.mark.ddp
def test_pipeline_and_study_run_on_both_hosts(cluster):
    th, env = cluster
    seen: set[str] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_checkpoints, args=(th.shared / "ray", seen, stop), daemon=True)
    watcher.start()
    start = time.time()
    r = th.host1_run(["dvc", "repro"], env=env, timeout=1800)
    pipeline_s = time.time() - start
    stop.set()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    start = time.time()
    r = th.host1_run(["dvc", "repro", "studies/ablation/dvc.yaml"], env=env, timeout=1800)
    study_s = time.time() - start
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    print(f"dvc repro on two hosts: {pipeline_s:.0f} s; 2-variant x 2-seed study: {study_s:.0f} s")

    assert any("/checkpoint_" in s for s in seen), "no checkpoint appeared in the shared storage"
    for project in (th.project, th.host2_project):  # nothing persisted on a host's own disk
        assert not (project / ".ray_results").exists()
    out = _result(th.host1_run(["python", "-c", INSPECT, str(th.root / "dl")], env=env, timeout=300))
    nodes = set(out["nodes"])
    assert len(nodes) == 2
    by_stage = {}
    for run in out["runs"]:
        by_stage.setdefault(run["tags"].get("adaskip.stage"), []).append(run)
    assert all(run["status"] == "FINISHED" for run in out["runs"]), [(x["name"], x["status"]) for x in out["runs"]]
    [train] = by_stage["train"]
    assert set(train["tags"]["adaskip.train_nodes"].split(",")) == nodes  # DDP workers on both hosts
    assert out["epochs"][train["id"]] == list(range(1, 5))
    assert train["artifact_uri"].startswith("mlflow-artifacts:")  # through the server, no shared disk
    assert Path(out["artifact"]).read_bytes() == (th.project / "models" / "model.pt").read_bytes()
    cells = [x for x in out["runs"] if "variant" in x["tags"]]
    assert len(cells) == 4 and {c["tags"]["adaskip.node_id"] for c in cells} == nodes  # study cells on both hosts
    assert {"tune", "evaluate", "report", "study"} <= set(by_stage)


@pytest.mark.ddp
def test_a_dead_worker_host_during_training_resumes_on_the_other(cluster):
    """Killing host2's Ray node after the first recorded checkpoint: Ray Train restarts the worker group on host1
    from that checkpoint and finishes; one MLflow run, each epoch logged once."""
    th, env = cluster
    raw = yaml.safe_load((th.project / "params.yaml").read_text())
    raw["train"]["epochs"] = 8  # another params hash: a new run
    (th.project / "params-kill.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = th.host1_popen(["python", "pipelines/train.py", "--params", "params-kill.yaml"], env=env,
                          stdout=-1, stderr=-1, text=True)
    deadline = time.time() + 900
    while not checkpoint_recorded(th.shared / "ray", "train-*"):
        assert proc.poll() is None and time.time() < deadline, "training ended before a checkpoint was recorded"
        time.sleep(0.2)
    th.kill_host2()
    killed_at = time.time()
    out, err = proc.communicate(timeout=1200)
    print(f"worker host killed; training finished {time.time() - killed_at:.0f} s later")
    try:
        assert proc.returncode == 0, out[-2000:] + err[-5000:]
        result = _result(th.host1_run(["python", "-c", INSPECT, str(th.root / "dl2")], env=env, timeout=300))
        runs = [x for x in result["runs"] if x["tags"].get("adaskip.stage") == "train"
                and result["epochs"][x["id"]] != list(range(1, 5))]
        [run] = runs  # one run for this training, not one per restart
        assert run["status"] == "FINISHED"
        assert result["epochs"][run["id"]] == list(range(1, 9))  # each epoch once
        assert len(run["tags"]["adaskip.train_nodes"].split(",")) == 2  # trained on both, then on host1 alone
    finally:
        th.start_host2()
        _wait_replaced(th)


def _wait_replaced(th: TwoHosts, timeout: float = 300) -> None:
    """Until Ray has marked the killed node dead and the restarted one alive (a dead node stays 'alive' for a while,
    and a task pinned to it never runs)."""
    script = ("import ray, sys, time\nray.init(logging_level='ERROR')\nd = time.time() + %r\n"
              "while time.time() < d:\n"
              "    nodes = ray.nodes()\n"
              "    if sum(n['Alive'] for n in nodes) == 2 and any(not n['Alive'] for n in nodes): sys.exit(0)\n"
              "    time.sleep(1)\n"
              "sys.exit('the killed node is still listed alive')\n" % timeout)
    th.host1_run(["python", "-c", script], timeout=timeout + 60, check=True)


CELL_TIMES = r"""
import json, sys
from mlflow.tracking import MlflowClient
c = MlflowClient()
exp = c.get_experiment_by_name("adaskip")
[parent] = c.search_runs([exp.experiment_id], f"tags.`adaskip.study` = '{sys.argv[1]}'")
cells = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
print("RESULT " + json.dumps({r.data.tags["variant"] + "-" + r.data.tags["seed"]: [r.info.start_time / 1000,
                              r.info.end_time / 1000] for r in cells}))
"""


def test_study_variants_run_at_once(cluster):
    """A 3-variant x 2-seed study: with cells run ahead across variants (the default) every cell runs at once on a
    cluster with room for them; one variant stage after another (`--alone`, as DVC alone would run them) runs a
    variant's seeds only. This machine's two hosts share 2 real cores, so the compute cannot overlap faster here:
    the test checks the schedule (cells overlap) and prints both wall times."""
    th, env = cluster
    variants = {"adn": {}, "individual_full": {"baseline": "super"}, "individual_base": {"baseline": "base"}}
    times, each, spans = {}, [], {}
    for mode in ("alone", "ahead"):  # each its own study name: its own cache and MLflow parent
        study = {**STUDY, "name": f"conc-{mode}", "variants": variants, "cpus_per_cell": 0.5}  # room for 6 cells
        path = f"studies/{mode}/study.yaml"
        for project in (th.project, th.host2_project):
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text(yaml.safe_dump(study))
        start = time.time()
        for v in variants:  # what DVC's matrix runs, one stage after another
            cmd = ["python", "pipelines/cells.py", "--study", path, "--variant", v] + (["--alone"] if mode == "alone" else [])
            t = time.time()
            r = th.host1_run(cmd, env=env, timeout=1800)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
            each.append(time.time() - t)
        times[mode] = time.time() - start
        spans[mode] = _result(th.host1_run(["python", "-c", CELL_TIMES, f"conc-{mode}"], env=env, timeout=120))
    print(f"3-variant x 2-seed study on two hosts: variant stages one after another {times['alone']:.0f} s "
          f"(stages {', '.join(f'{t:.0f}' for t in each[:3])} s); cells of every variant at once "
          f"{times['ahead']:.0f} s (stages {', '.join(f'{t:.0f}' for t in each[3:])} s)")
    ahead, alone = spans["ahead"], spans["alone"]
    assert len(ahead) == len(alone) == 6
    assert max(s for s, _ in ahead.values()) < min(e for _, e in ahead.values())  # all six cells ran together
    for before, after in (("adn", "individual_full"), ("individual_full", "individual_base")):
        assert max(alone[f"{before}-{s}"][1] for s in (0, 1)) <= min(alone[f"{after}-{s}"][0] for s in (0, 1))
    assert max(each[4:]) < 0.5 * min(each[:3])  # later stages only collect their cells: no Ray, no preflight
