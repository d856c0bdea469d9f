"""The whole pipeline on a real two-host Ray cluster (tests/multihost.py), following docs/scaling-out.md: an MLflow
tracking server with PostgreSQL on the head host (credentials required, HTTPS), a shared folder as storage (NFS),
`adaskip doctor`, then `dvc repro` of the default pipeline and a 2-variant x 2-seed study from the head host; the
train stage and a study again with S3-only storage (an S3 API server on the head host); a worker host killed mid-run
and mid-study. Root only; `make test-cluster`."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers import PROGRAMS, checkpoint_recorded, wait_until
from multihost import TwoHosts, two_hosts  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.subprocess]
USER, PASSWORD = "adaskip", "cluster-test-password-1"  # MLflow wants 12+ characters
# Each cell a 2-worker DDP run with one worker per host (1 CPU each): the two hosts' 2 + 2 CPUs run two cells at once.
DDP_CELLS = {"train": {"workers": 2, "cpus_per_worker": 1, "placement": "spread"}}
STUDY = {
    "name": "cluster",
    "seeds": [0, 1],
    "epochs": 2,
    "reference": "adn",
    "overrides": DDP_CELLS,
    "variants": {"adn": {}, "individual_full": {"baseline": "super"}},
}

# Run on host1 (the only place that reaches the server): every run of the experiment with its status and tags, the
# epochs logged per train run, and the model artifact of the newest train run.
# The alive nodes of the cluster (a step of its own: a hang here is not taken for the tracking server's).


def _result(proc) -> dict:
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(line[len("RESULT ") :])


def _watch_checkpoints(root: Path, seen: set[str], stop: threading.Event) -> None:
    """Record every Ray Train checkpoint folder that appears in the shared storage (the stage deletes them once
    the model file is written)."""
    while not stop.is_set():
        seen.update(str(p.relative_to(root)) for p in root.glob("train-*/checkpoint_*"))
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(two_hosts: TwoHosts):  # noqa: F811 (the fixture)
    """The tracking server on host1 and the environment of a driver there (docs/scaling-out.md, steps 1-3)."""
    th = two_hosts
    creds = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    # the server's output to a file: a pipe nobody reads fills up (64 KiB of request logs) and then blocks the
    # server, which stops answering in the middle of the module
    server_log = (th.root / "mlflow-server.log").open("w")
    # HTTPS with a self-signed pair (docs/serving.md "A tracking server"): every node verifies it with the certificate,
    # in a folder both hosts read
    server = th.host1_popen(
        [
            "python",
            "-m",
            "adaskip.ops.tracking_server",
            "--host",
            th.host1.ip,
            "--port",
            "5000",
            "--state",
            str(th.root / "mlflow"),
            "--self-signed",
        ],
        env=creds,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    uri, cert = f"https://{th.host1.ip}:5000", th.root / "mlflow" / "tls" / "server.crt"
    ready = th.host1_run(["python", str(PROGRAMS / "wait_https.py"), f"{uri}/health", str(cert), "150"], timeout=180)
    assert ready.returncode == 0, (th.root / "mlflow-server.log").read_text()[-3000:] + ready.stderr
    env = {
        "MLFLOW_TRACKING_URI": uri,
        **creds,
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(cert),
        "ADASKIP_STORAGE": str(th.shared / "ray"),
    }
    for f, text in (("params.yaml", None), ("studies/ablation/study.yaml", yaml.safe_dump(STUDY))):
        for project in (th.project, th.host2_project):  # the same checkout on every node
            if text is None:  # spread the two DDP workers over both hosts; 4 epochs (the INSPECT checks count them)
                raw = yaml.safe_load((project / f).read_text())
                raw["train"].update(placement="spread", epochs=4)
                text = yaml.safe_dump(raw, sort_keys=False)
            (project / f).write_text(text)
    yield th, env
    server.terminate()
    server.wait(timeout=60)
    server_log.close()


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
    assert r.stdout.count("tracking server's certificate verified against MLFLOW_TRACKING_SERVER_CERT_PATH") == 2
    r = th.host1_run(["adaskip", "doctor"], env={**env, "MLFLOW_TRACKING_PASSWORD": "wrong-password-123"}, timeout=300)
    assert r.returncode == 1 and r.stdout.count("refused this client's credentials") == 2, r.stdout + r.stderr[-2000:]


def test_clients_without_credentials_or_token_are_refused(cluster):
    th, env = cluster
    uri = env["MLFLOW_TRACKING_URI"]
    trust = {"MLFLOW_TRACKING_SERVER_CERT_PATH": env["MLFLOW_TRACKING_SERVER_CERT_PATH"]}
    r = th.host2_run(
        ["python", "-c", f"from mlflow.tracking import MlflowClient\nMlflowClient('{uri}').search_experiments()"],
        env=trust,
        timeout=120,
    )
    assert r.returncode != 0 and "401" in r.stderr, r.stderr[-2000:]
    # with the password but without the certificate: refused before sending it
    r = th.host2_run(["adaskip", "doctor"], env={**env, "MLFLOW_TRACKING_SERVER_CERT_PATH": None}, timeout=300)
    assert r.returncode != 0 and "certificate does not verify" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    r = th.host2_run(
        ["python", "-c", "import ray; ray.init(); print('CONNECTED')"], env={"RAY_AUTH_TOKEN": None}, timeout=120
    )
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
    out = _result(th.host1_run(["python", str(PROGRAMS / "inspect_run.py"), str(th.root / "dl")], env=env, timeout=300))
    nodes = set(_result(th.host1_run(["python", str(PROGRAMS / "alive_nodes.py")], env=env, timeout=300)))
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
    assert len(cells) == 4  # each a 2-worker DDP run spread over both hosts
    assert all(set(c["tags"]["adaskip.train_nodes"].split(",")) == nodes for c in cells), [c["tags"] for c in cells]
    assert {"tune", "evaluate", "report", "study"} <= set(by_stage)


S3_SECRET = "cluster-s3-secret-do-not-persist-7f3a"  # distinctive: the scan below looks for it in every object
# Every object in the bucket, and whether any holds the secret key (run on host1, which reaches the server).


@pytest.mark.ddp
def test_train_and_study_with_s3_storage_only(cluster):
    """docs/scaling-out.md with object storage and no shared folder: an S3 API server (moto) on the head host,
    ADASKIP_STORAGE=s3://..., the keys only in the driver's environment (the job forwards them to the workers). The
    train stage (2 DDP workers, one per host) checkpoints every epoch to the bucket; a study's cells keep their
    results there; nothing goes to the shared folder or a host's disk, and no object holds the secret key."""
    th, env = cluster
    moto_log = (th.root / "moto.log").open("w")
    moto = th.host1_popen(
        ["moto_server", "-H", th.host1.ip, "-p", "9000"], env={}, stdout=moto_log, stderr=subprocess.STDOUT
    )
    s3 = {
        "AWS_ENDPOINT_URL": f"http://{th.host1.ip}:9000",
        "AWS_ACCESS_KEY_ID": "cluster-key-id",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_REGION": "us-east-1",
    }
    env = {**env, **s3, "ADASKIP_STORAGE": "s3://adaskip-cluster/runs"}
    shared_before = sorted(p.name for p in (th.shared / "ray").iterdir())
    try:
        assert th.host1_run(["python", str(PROGRAMS / "s3_ready.py")], env=s3, timeout=120).returncode == 0
        raw = yaml.safe_load((th.project / "params.yaml").read_text())
        raw["train"]["seed"] = 1  # another params hash than the shared-folder run's (4 epochs as that one, which
        # the dead-host test below tells apart from its own 8-epoch run): trained again, from scratch
        (th.project / "params-s3.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        study = {**STUDY, "name": "s3", "seeds": [0], "variants": {"adn": {}}}
        for project in (th.project, th.host2_project):
            (project / "studies" / "s3").mkdir(parents=True, exist_ok=True)
            (project / "studies" / "s3" / "study.yaml").write_text(yaml.safe_dump(study))
        start = time.time()
        r = th.host1_run(["python", "pipelines/train.py", "--params", "params-s3.yaml"], env=env, timeout=1800)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
        train_s = time.time() - start
        r = th.host1_run(["python", "pipelines/cells.py", "--study", "studies/s3/study.yaml"], env=env, timeout=1800)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
        study_s = time.time() - start - train_s
        print(f"S3-only storage on two hosts: train {train_s:.0f} s, 1-cell study {study_s:.0f} s")
        scan = _result(th.host1_run(["python", str(PROGRAMS / "s3_scan.py"), S3_SECRET], env=s3, timeout=300))
    finally:
        moto.terminate()
        moto.wait(timeout=60)
        moto_log.close()
    puts = [ln for ln in (th.root / "moto.log").read_text().splitlines() if '"PUT /adaskip-cluster/runs/' in ln]
    assert any("/runs/train-" in ln and "/checkpoint_" in ln for ln in puts), puts[-20:]  # every epoch, then removed
    assert any("/runs/study-s3/cell-" in ln and "/checkpoint_" in ln for ln in puts), puts[-20:]
    assert any(k.startswith("runs/study-s3/adn-seed0-") and k.endswith(".csv") for k in scan["keys"]), scan["keys"]
    assert scan["leaks"] == [], scan["leaks"]
    assert sorted(p.name for p in (th.shared / "ray").iterdir()) == shared_before  # the shared folder unused
    for project in (th.project, th.host2_project):
        assert not (project / ".ray_results").exists()
    lines = (th.project / "studies" / "s3" / "results" / "cells" / "adn.csv").read_text().splitlines()
    assert len(lines) == 17  # a header and the 16 configurations


@pytest.mark.ddp
def test_a_dead_worker_host_during_training_resumes_on_the_other(cluster):
    """Killing host2's Ray node after the first recorded checkpoint: Ray Train restarts the worker group on host1
    from that checkpoint and finishes; one MLflow run, each epoch logged once."""
    th, env = cluster
    raw = yaml.safe_load((th.project / "params.yaml").read_text())
    raw["train"]["epochs"] = 8  # another params hash: a new run
    (th.project / "params-kill.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = th.host1_popen(
        ["python", "pipelines/train.py", "--params", "params-kill.yaml"], env=env, stdout=-1, stderr=-1, text=True
    )
    wait_until(
        lambda: checkpoint_recorded(th.shared / "ray", "train-*"),
        900,
        "a checkpoint",
        alive=lambda: proc.poll() is None,
    )
    th.kill_host2()
    killed_at = time.time()
    out, err = proc.communicate(timeout=1200)
    print(f"worker host killed; training finished {time.time() - killed_at:.0f} s later")
    try:
        assert proc.returncode == 0, out[-2000:] + err[-5000:]
        result = _result(
            th.host1_run(["python", str(PROGRAMS / "inspect_run.py"), str(th.root / "dl2")], env=env, timeout=300)
        )
        runs = [
            x
            for x in result["runs"]
            if x["tags"].get("adaskip.stage") == "train" and result["epochs"][x["id"]] != list(range(1, 5))
        ]
        [run] = runs  # one run for this training, not one per restart
        assert run["status"] == "FINISHED"
        assert result["epochs"][run["id"]] == list(range(1, 9))  # each epoch once
        assert len(run["tags"]["adaskip.train_nodes"].split(",")) == 2  # trained on both, then on host1 alone
    finally:
        th.start_host2()
        _wait_replaced(th)


@pytest.mark.ddp
def test_a_dead_worker_host_mid_study_resumes_its_cells(cluster):
    """Three 2-worker DDP cells, one worker per host (two run at once, the third waits in the queue); host2's Ray
    node killed once a cell has a recorded checkpoint. The cells it was running restart their worker groups from
    their latest checkpoints on host1 (the log says from which epoch), the queued one runs after them, and the study
    finishes with all its rows and no traceback; each cell's MLflow run has every epoch once."""
    th, env = cluster
    path, epochs = "studies/kill/study.yaml", 6
    study = {**STUDY, "name": "kill", "seeds": [0, 1, 2], "epochs": epochs, "variants": {"adn": {}}}
    for project in (th.project, th.host2_project):
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(yaml.safe_dump(study))
    log = th.root / "kill-study.log"
    with log.open("w") as out:
        proc = th.host1_popen(
            ["python", "pipelines/cells.py", "--study", path], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: checkpoint_recorded(th.shared / "ray", "study-kill/cell-*"),
            900,
            "a cell's checkpoint",
            alive=lambda: proc.poll() is None,
            detail=lambda: log.read_text()[-3000:],
        )
        th.kill_host2()
        killed_at = time.time()
        assert proc.wait(timeout=1500) == 0, log.read_text()[-5000:]
        text = log.read_text()
        print(f"worker host killed mid-study; the study finished {time.time() - killed_at:.0f} s later")
        assert "Traceback" not in text and "resumes after epoch" in text, text[-5000:]
        print("\n".join(ln for ln in text.splitlines() if "resumes after epoch" in ln))
        rows = (th.project / "studies" / "kill" / "results" / "cells" / "adn.csv").read_text().splitlines()
        assert len(rows) == 1 + 3 * 16  # every cell's whole grid
        cells = _result(th.host1_run(["python", str(PROGRAMS / "study_cells.py"), "kill"], env=env, timeout=120))
        assert len(cells) == 3 and all(c["status"] == "FINISHED" for c in cells.values()), cells
        assert all(c["epochs"] == list(range(1, epochs + 1)) for c in cells.values()), cells  # each epoch once
    finally:
        if proc.poll() is None:
            proc.kill()
        th.start_host2()
        _wait_replaced(th)


def _wait_replaced(th: TwoHosts, timeout: float = 300) -> None:
    """Until Ray has marked the killed node dead and the restarted one alive (a dead node stays 'alive' for a while,
    and a task pinned to it never runs)."""
    th.host1_run(
        ["python", str(PROGRAMS / "wait_nodes.py"), "2", str(timeout), "--dead"], timeout=timeout + 60, check=True
    )


def test_study_variants_run_at_once(cluster):
    """A 2-variant x 1-seed study of 1-CPU cells, sized to this machine's 2 real cores: with cells run ahead across
    variants (the default) both cells train at once; one variant stage after another (`--alone`, as DVC alone would
    run them) one cell at a time. All at once takes at most 0.65 x the time of one after another (ideal 0.5, for cells
    of equal cost: two self-distillation variants; with a cheaper baseline beside adn the ideal is its share)."""
    th, env = cluster
    variants = {"adn": {}, "no_skip_aware_norm": {"overrides": {"model": {"skip_aware_norm": False}}}}
    times, each, spans = {}, [], {}
    for mode in ("alone", "ahead"):  # each its own study name: its own cache and MLflow parent
        study = {
            **STUDY,
            "name": f"conc-{mode}",
            "seeds": [0],
            # long enough that training, one core per cell, outweighs start-up: a cell's start-up imports torch in
            # three processes at once, which use both cores when the cell runs alone (0.68 with 20 epochs)
            "epochs": 40,
            "variants": variants,
            "overrides": {"train": {"workers": 1, "cpus_per_worker": 1}},
        }
        path = f"studies/{mode}/study.yaml"
        for project in (th.project, th.host2_project):
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text(yaml.safe_dump(study))
        start = time.time()
        for v in variants:  # what DVC's matrix runs, one stage after another
            cmd = ["python", "pipelines/cells.py", "--study", path, "--variant", v] + (
                ["--alone"] if mode == "alone" else []
            )
            t = time.time()
            r = th.host1_run(cmd, env=env, timeout=1800)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
            each.append(time.time() - t)
        times[mode] = time.time() - start
        cells = _result(
            th.host1_run(["python", str(PROGRAMS / "study_cells.py"), f"conc-{mode}"], env=env, timeout=120)
        )
        spans[mode] = {name: c["span"] for name, c in cells.items()}
    ratio = times["ahead"] / times["alone"]
    print(
        f"2-variant x 1-seed study of 1-CPU cells on two hosts (2 real cores): one variant after another "
        f"{times['alone']:.0f} s (stages {', '.join(f'{t:.0f}' for t in each[:2])} s); all at once "
        f"{times['ahead']:.0f} s (stages {', '.join(f'{t:.0f}' for t in each[2:])} s); ratio {ratio:.2f}"
    )
    ahead, alone = spans["ahead"], spans["alone"]
    assert len(ahead) == len(alone) == 2
    assert max(s for s, _ in ahead.values()) < min(e for _, e in ahead.values())  # both cells ran together
    assert alone["adn-0"][1] <= alone["no_skip_aware_norm-0"][0]
    assert each[3] < 0.5 * min(each[:2])  # the later stage only collects its cell: no Ray, no preflight
    assert ratio <= 0.65
