"""Tests of adaskip.export: a sub-network exported as a standalone PyTorch / TorchScript / ONNX network computes
what ``model(x, skip)`` computes, loads without adaskip, is smaller, and bad input fails cleanly without output.

Speed: tiny random-weight models (ResNet-18 at widths 8-16, MobileNetV2-0.5, DeiT-tiny and Swin-tiny at 32 px),
one model file per family built once per module, with scrambled norms so that a wrong norm set shows; a mixed
configuration per family; every configuration of a small trained model of each family (one epoch on digits); one
subprocess checks every TorchScript and ONNX file at once.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adaskip.errors import AdaskipError
from adaskip.export import ExportError, ExportVerificationError, SubNetwork, export_subnetwork, load_exported
from adaskip.models import SkipAwareNorm, count_macs, count_params, create_model
from adaskip.training import CheckpointError, load_model, save_atomic
from helpers import PROGRAMS

NUM_CLASSES = 7
SIZE = 32
# family -> (timm name, timm kwargs); every model runs at SIZE px
MODELS = {
    "resnet": ("resnet18", {"channels": [8, 8, 16, 16]}),
    "mobilenetv2": ("mobilenetv2_050", {}),
    "vit": ("deit_tiny_patch16_224", {"img_size": SIZE}),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": SIZE, "embed_dim": 24}),
}
FORMATS = ["torch", "torchscript", "onnx"]
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning"),
    pytest.mark.usefixtures("one_thread"),
]


def _configs(family: str) -> list[str]:
    """The super-net, the base-net and a mixed one (every configuration of a trained model of each family:
    test_every_configuration_of_a_trained_model_exports)."""
    s = 5 if family == "mobilenetv2" else 4
    return ["F" * s, "T" * s, "TF" * (s // 2) + "T" * (s % 2)]


CASES = [(f, _configs(f)[2], fmt) for f in MODELS for fmt in FORMATS]  # the mixed one: both norm sets in use


def _scramble_norms(net: nn.Module, seed: int) -> None:
    """Distinct random affines for every norm of both sets, then train-mode passes of the super- and base-net so
    each BatchNorm set has its own running statistics: a wrong norm-set choice changes the logits (timm
    zero-initialises the last BN of a residual block, which would otherwise hide it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        net.train()
        for skip in ("F" * net.num_stages, "T" * net.num_stages) * 2:
            net(2 * torch.randn(4, 3, SIZE, SIZE, generator=g) + 0.5, skip=skip)
    net.eval()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """One model file per family, laid out as the train stage writes models/model.pt."""
    root = tmp_path_factory.mktemp("models")
    files = {}
    for i, (family, (name, kwargs)) in enumerate(MODELS.items()):
        torch.manual_seed(i)
        net = create_model(name, num_classes=NUM_CLASSES, **kwargs)
        _scramble_norms(net, seed=i)
        macs = {str(c): count_macs(net, c, (3, SIZE, SIZE)) for c in net.configs()}
        files[family] = root / f"{family}.pt"
        save_atomic(
            {"spec": net.spec, "state_dict": net.state_dict(), "macs": macs, "metrics": {}, "weights": "raw"},
            files[family],
        )
    return files


@pytest.fixture(scope="module")
def nets(model_files) -> dict[str, nn.Module]:
    return {family: load_model(path)[0].eval() for family, path in model_files.items()}


def _batch(n: int = 5, seed: int = 123) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _run_file(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "torch":
        return load_exported(path)(x)
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _image_size(family: str):
    return None if MODELS[family][1].get("img_size") else SIZE  # ViT/Swin: from the model file's spec


def test_skip_aware_norm_sets_differ(nets):
    """The fixture makes the check meaningful: both norm sets of every mandatory block differ."""
    for net in nets.values():
        for i in range(net.num_stages):
            for sa in net.skip_aware_norms(i):
                assert not torch.equal(sa.full.weight, sa.skipped.weight)
                if isinstance(sa.full, nn.BatchNorm2d):
                    assert not torch.equal(sa.full.running_mean, sa.skipped.running_mean)


@pytest.mark.parametrize("family,skip,fmt", CASES)
@torch.no_grad()
def test_export_matches_adaptive_model(family, skip, fmt, model_files, nets, tmp_path):
    net = nets[family]
    out = tmp_path / f"sub.{fmt}"
    result = export_subnetwork(model_files[family], skip, fmt, out, image_size=_image_size(family))
    assert result.path == out and out.is_file() and result.skip == skip and result.image_size == SIZE
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left

    # independently of the export's own check: another batch (size 5; traced with 2, checked with 3)
    x = _batch()
    ref = net(x, skip=skip)
    got = _run_file(out, fmt, x)
    scale = max(1.0, ref.abs().max().item())
    assert (got - ref).abs().max().item() <= 1e-4 * scale
    assert 0 <= result.max_abs_diff <= result.tolerance

    # complexity: MACs / params of exactly the blocks that run; skipped blocks and unused norms gone
    s = net.num_stages
    assert result.macs == count_macs(net, skip, (3, SIZE, SIZE))
    assert result.params == count_params(net, skip)
    if "T" in skip:
        assert result.params < count_params(net, "F" * s) < sum(p.numel() for p in net.parameters())
    if fmt == "torch":
        sub = load_exported(out)
        assert isinstance(sub, SubNetwork) and not sub.training
        assert not any(isinstance(m, SkipAwareNorm) for m in sub.modules())
        assert sum(p.numel() for p in sub.parameters()) == result.params
        assert sub.blocks_per_stage == [m if t == "T" else m + k for (m, k), t in zip(net.blocks_per_stage, skip)]
        with FlopCounterMode(display=False) as counter:
            sub(torch.zeros(1, 3, SIZE, SIZE))
        if family != "vit":  # CPU attention is counted by count_macs' custom mapping only
            assert counter.get_total_flops() // 2 == result.macs


@pytest.mark.subprocess
def test_fresh_process_loads_without_adaskip(model_files, nets, tmp_path):
    """TorchScript and ONNX exports of every family run in a python that cannot import adaskip or timm."""
    x = _batch(4, seed=7)
    torch.save(x, tmp_path / "x.pt")
    jobs = []
    for family, path in model_files.items():
        skip = _configs(family)[2]  # mixed
        expected = tmp_path / f"{family}.expected.pt"
        torch.save(nets[family](x, skip=skip).detach(), expected)
        for fmt in ("torchscript", "onnx"):
            out = tmp_path / f"{family}.{fmt}"
            export_subnetwork(path, skip, fmt, out, image_size=_image_size(family))
            jobs.append({"path": str(out), "fmt": fmt, "expected": str(expected)})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))

    proc = subprocess.run(
        [sys.executable, str(PROGRAMS / "load_exports_alone.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok") and proc.stdout.count("\n") == len(jobs) + 1


def test_adaptive_model_untouched(nets, tmp_path):
    net = nets["resnet"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    norms = sum(isinstance(m, SkipAwareNorm) for m in net.modules())
    x = _batch(2)
    ref = {c: net(x, skip=c) for c in ("FFFF", "TTTT")}
    result = export_subnetwork(net, "TTTT", "torch", tmp_path / "s.pt", image_size=SIZE)  # net.spec: its architecture
    assert result.params < count_params(net, "FFFF")
    assert not net.training  # mode restored
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sum(isinstance(m, SkipAwareNorm) for m in net.modules()) == norms
    assert all(torch.equal(net(x, skip=c), y) for c, y in ref.items())
    net.spec, spec = None, net.spec  # a model not built by create_model: the torch format has no spec to store
    with pytest.raises(ExportError, match="net.spec is None"):
        export_subnetwork(net, "TTTT", "torch", tmp_path / "t.pt", image_size=SIZE)
    net.spec = spec
    assert not (tmp_path / "t.pt").exists()


@pytest.mark.parametrize("skip", ["TTF", "TTFFF", "TTXF", "", "1100"])
def test_bad_skip_string(skip, model_files, tmp_path):
    out = tmp_path / "sub.onnx"
    with pytest.raises(ExportError) as info:
        export_subnetwork(model_files["resnet"], skip, "onnx", out, image_size=SIZE)
    message = str(info.value)
    assert "expected 4 characters" in message and "\n" not in message
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_verification_leaves_no_file(fmt, model_files, tmp_path, monkeypatch):
    """A wrong norm-set choice is caught by the check, and nothing is written (an existing file survives)."""
    import adaskip.export as export

    monkeypatch.setattr(export, "_plain_norm", lambda norm, skipped: norm.full if skipped else norm.skipped)
    new, old = tmp_path / "new", tmp_path / "old"
    old.write_bytes(b"previous export")
    for out in (new, old):
        with pytest.raises(ExportVerificationError, match="differs from model"):
            export_subnetwork(model_files["resnet"], "TFTF", fmt, out, image_size=SIZE)
    assert not new.exists() and old.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no temporary file left


def test_model_file_errors(model_files, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_subnetwork(tmp_path / "missing.pt", "TTTT", "torch", tmp_path / "a.pt", image_size=SIZE)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model_files["resnet"].read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        export_subnetwork(corrupt, "TTTT", "torch", tmp_path / "a.pt", image_size=SIZE)
    assert not (tmp_path / "a.pt").exists()
    with pytest.raises(CheckpointError, match="not an adaskip torch-format export"):
        load_exported(model_files["resnet"])


def test_options(model_files, tmp_path):
    # ResNet runs at any size: not recorded in its file, so required; ViT/Swin: from the spec
    with pytest.raises(ExportError, match="image-size"):
        export_subnetwork(model_files["resnet"], "TTTT", "torch", tmp_path / "a.pt")
    with pytest.raises(ExportError, match="image size 64"):  # DeiT built for 32 px
        export_subnetwork(model_files["vit"], "TTTT", "torch", tmp_path / "a.pt", image_size=64)
    with pytest.raises(ExportError, match="unknown export format"):
        export_subnetwork(model_files["resnet"], "TTTT", "tflite", tmp_path / "a.pt", image_size=SIZE)
    with pytest.raises(ExportError, match="opset 9 not supported"):
        export_subnetwork(model_files["resnet"], "TTTT", "onnx", tmp_path / "a.onnx", image_size=SIZE, opset=9)
    assert not list(tmp_path.iterdir())
    import onnx

    export_subnetwork(model_files["resnet"], "TFFT", "onnx", tmp_path / "a.onnx", image_size=SIZE, opset=18)
    opsets = {o.domain: o.version for o in onnx.load(str(tmp_path / "a.onnx")).opset_import}
    assert opsets[""] == 18


def _cli(argv: list[str]) -> int:
    """``adaskip ARGV`` (the console command's main, in this process): its exit code."""
    from adaskip.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_cli(model_files, tmp_path, capsys):
    assert _cli(["export", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(opt in help_text for opt in ("--skip", "--format", "--out", "--opset", "--image-size", "onnx"))

    out = tmp_path / "base.onnx"
    assert _cli(["export", str(model_files["swin"]), "--skip", "ttft", "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert out.is_file() and printed.err == ""
    (line,) = printed.out.strip().splitlines()
    assert all(s in line for s in ("TTFT", "onnx", str(out), "MACs", "params", "max |diff|"))

    assert (
        _cli(
            [
                "export",
                str(model_files["resnet"]),
                "--skip",
                "TTXF",
                "--format",
                "torch",
                "--out",
                str(tmp_path / "x.pt"),
                "--image-size",
                str(SIZE),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "expected 4 characters" in err
    assert (
        _cli(
            [
                "export",
                str(tmp_path / "nope.pt"),
                "--skip",
                "TTTT",
                "--format",
                "torch",
                "--out",
                str(tmp_path / "x.pt"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    assert issubclass(ExportError, AdaskipError) and issubclass(CheckpointError, AdaskipError)


# every family's sub-networks export in CI (test_export_matches_adaptive_model); all 2^S of a trained model:
# ResNet in CI, the others (30-50 s each) in make test-extended
@pytest.mark.parametrize(
    "name",
    [
        "resnet34",
        *(
            pytest.param(n, marks=pytest.mark.extended)
            for n in ("mobilenetv2_100", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224")
        ),
    ],
)
def test_every_configuration_of_a_trained_model_exports(name, tiny_raw, tmp_path):
    """A small model of each family trained on digits (one epoch of self-distillation in this process, tests/conftest
    TINY at 16 px: both norm sets trained), its model file written as the train stage writes it; every one of its
    2^S sub-networks exports to every format, and each export's own check (the written file loaded back and run
    against ``model(x, skip)`` at another batch size) passes."""
    from adaskip.config import Params
    from adaskip.export import FORMATS
    from adaskip.training import WorkerEnv, build_from_spec, fit
    from adaskip.models.file import load_state

    params = Params.model_validate({**tiny_raw, "model": {**tiny_raw["model"], "name": name}})
    final: dict = {}
    metrics = fit(params, WorkerEnv(report=lambda m, state: final.update(state or {})), epochs=1)
    assert math.isfinite(metrics["train_total"])
    path = tmp_path / "model.pt"
    save_atomic(
        {
            "spec": final["spec"],
            "state_dict": final["model"],
            "macs": final["macs"],
            "metrics": metrics,
            "weights": "raw",
            "image_size": params.data.image_size,
        },
        path,
    )
    net, file = load_model(path)
    trained = build_from_spec(final["spec"])
    load_state(trained, final["model"], "trained")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), trained.state_dict().values()))
    pairs = [
        (a, b)
        for i in range(net.num_stages)
        for sa in net.skip_aware_norms(i)
        for a, b in zip(sa.full.state_dict().values(), sa.skipped.state_dict().values())
    ]
    assert pairs and any(not torch.equal(a, b) for a, b in pairs)  # trained: the two norm sets went their own ways
    for cfg in net.configs():
        for fmt in FORMATS:
            result = export_subnetwork(net, str(cfg), fmt, tmp_path / f"{cfg}.{fmt}", image_size=file["image_size"])
            assert result.max_abs_diff <= result.tolerance and result.skip == str(cfg), result
    assert len(list(tmp_path.glob("*.onnx"))) == 2**net.num_stages
