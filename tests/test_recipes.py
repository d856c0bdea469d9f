"""Recipes (params overlays in recipes/, ``adaskip recipe``) and the recipe knobs they set: mixup/cutmix, EMA and
channels-last training. Fast, CPU, no Ray."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import adaskip
from adaskip import cli
from adaskip.config import ConfigError, load_params, merge_params, parse_params
from adaskip.data import load_subsets, make_loader
from adaskip.recipes import RECIPES_DIR, apply_recipe, load_overlay, parse_sets, recipe_overlay, shipped
from adaskip.training import DistillConfig, build_from_spec, cross_entropy, distill_step, loop

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(shipped())


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """A copy of the shipped params.yaml."""
    return Path(shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml"))


def _keys(overlay: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in overlay.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "kwargs" else {prefix + k}
    return out


def _comments(text: str) -> list[str]:
    return [line[line.index("#") :] for line in text.splitlines() if "#" in line]


def _key_order(text: str) -> list[str]:
    """Sections and their keys (not the contents of model.kwargs), in file order."""
    return re.findall(r"^ {0,2}([A-Za-z_]+):", text, flags=re.M)


def _run_cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    return e.value.code


# ----------------------------------------------------------------------------- the recipe files
def test_shipped_recipes():
    assert {"resnet50_imagenet", "vit_b16_imagenet", "cifar100", "digits"} <= set(RECIPES)
    for name in RECIPES:
        text = (RECIPES_DIR / f"{name}.yaml").read_text()
        assert text.startswith("# "), f"{name}: starts with a header comment citing its source"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_builds_and_digits_restores(name, params_file, tmp_path):
    """Each recipe applied to params.yaml validates and builds its model; digits.yaml sets the same keys, so applying
    it afterwards gives back params.yaml byte for byte."""
    original = params_file.read_text()
    _, overlay = recipe_overlay(name, [] if name == "digits" else [f"data.path={tmp_path}"])
    apply_recipe(overlay, params_file, name)
    params = load_params(params_file)
    for key in _keys(overlay):  # every key the recipe sets is in effect
        section, name_ = key.split(".")
        assert getattr(params, section).model_dump(mode="json")[name_] == overlay[section][name_], key
    net = params.build_model(num_classes=3)
    assert net.backbone.num_classes == 3 and net.family == ("vit" if name.startswith("vit") else "resnet")
    assert _keys(load_overlay(RECIPES_DIR / f"{name}.yaml")) == _keys(load_overlay(RECIPES_DIR / "digits.yaml"))
    apply_recipe(load_overlay(RECIPES_DIR / "digits.yaml"), params_file, "digits")
    assert params_file.read_text() == original


def test_digits_recipe_is_what_params_yaml_ships(params_file):
    original = params_file.read_text()
    assert apply_recipe(load_overlay(RECIPES_DIR / "digits.yaml"), params_file, "digits") == []
    assert params_file.read_text() == original


def test_resnet50_recipe_is_the_papers(params_file, tmp_path):
    """The effective hyperparameters after applying the recipe to the shipped params.yaml are the paper's list:
    SGD (plain momentum 0.9), lr 0.1, weight decay 1e-4 (none on norms/biases), batch 256, 150 epochs, lr x0.1 at
    60/100/140, ResNet-50 at full width with the default split, alpha 0.5, T 1, no sweep."""
    _, overlay = recipe_overlay("resnet50_imagenet", [f"data.path={tmp_path}"])
    apply_recipe(overlay, params_file, "resnet50_imagenet")
    p = load_params(params_file)
    t = p.train
    assert (p.model.name, p.model.kwargs, p.model.split, p.model.pretrained) == ("resnet50", {}, None, None)
    assert (p.data.name, p.data.image_size) == ("imagefolder", 224)
    assert (t.lr, t.momentum, t.weight_decay, t.batch_size, t.epochs) == (0.1, 0.9, 1e-4, 256, 150)
    assert (t.scheduler, t.decay_milestones, t.warmup_epochs) == ("multistep", [60, 100, 140], 0)
    assert (t.alpha, t.temperature, t.label_smoothing, t.mixup, t.cutmix, t.ema) == (0.5, 1.0, 0.0, 0.0, 0.0, False)
    assert (t.precision, t.use_gpu, t.workers, p.tune.enabled) == (None, True, 8, False)
    net = p.build_model(num_classes=1000)
    assert net.split == [2, 2, 3, 2] and net.backbone.num_features == 2048
    optimizer, scheduler = loop._optimizer_and_scheduler(net, p, t.epochs)
    assert type(optimizer) is torch.optim.SGD
    assert {g["momentum"] for g in optimizer.param_groups} == {0.9}
    assert not any(g["nesterov"] for g in optimizer.param_groups)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-4]  # norms and biases: none
    lrs = {}  # fit trains epoch e (1-based) at the lr of scheduler.step(e - 1): timm's milestones count from 1
    for epoch in (1, 59, 60, 99, 100, 139, 140, 150):
        scheduler.step(epoch - 1)
        lrs[epoch] = optimizer.param_groups[0]["lr"]
    assert lrs == pytest.approx({1: 0.1, 59: 0.1, 60: 0.01, 99: 0.01, 100: 1e-3, 139: 1e-3, 140: 1e-4, 150: 1e-4})


# ----------------------------------------------------------------------------- adaskip recipe
def test_cli_keeps_comments_and_order(params_file, tmp_path, capsys):
    original = params_file.read_text()
    assert (
        _run_cli(
            "recipe",
            "cifar100",
            "--params",
            str(params_file),
            "--set",
            f"data.path={tmp_path}",
            "--set",
            "train.epochs=7",
        )
        == 0
    )
    text = params_file.read_text()
    assert text != original
    assert _comments(text) == _comments(original)
    assert _key_order(text) == _key_order(original)
    p = load_params(params_file)
    assert (p.data.name, p.train.epochs, p.model.kwargs) == ("cifar100", 7, {"output_stride": 8})
    out = capsys.readouterr().out
    assert "data.name: digits -> cifar100" in out and "train.epochs: 15 -> 7" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cifar100", "--set", "train.lrr=0.1"], "train.lrr: unknown key"),
        (["cifar100", "--set", "trian.lr=0.1"], "trian: unknown key"),
        (["cifar100", "--set", "train.lr=-1"], "train.lr"),
        (["no_such_recipe"], "unknown recipe 'no_such_recipe'"),
        (["cifar100", "--set", "train.lr"], "expected section.key=value"),
    ],
)
def test_cli_bad_input_exits_2_and_leaves_params(argv, message, params_file, tmp_path, capsys):
    original = params_file.read_text()
    sets = ["--set", f"data.path={tmp_path}"] if argv[0] == "cifar100" else []
    assert _run_cli("recipe", *argv, *sets, "--params", str(params_file)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert params_file.read_text() == original


def test_cli_without_data_path_names_it(params_file, capsys):
    assert _run_cli("recipe", "resnet50_imagenet", "--params", str(params_file)) == 2
    assert "data.path" in capsys.readouterr().err


def test_cli_help_lists_shipped_recipes(capsys):
    assert _run_cli("recipe", "--help") == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES)


def test_parse_sets():
    assert parse_sets(["train.lr=0.1", "model.kwargs={a: 1}", "data.path="]) == {
        "train": {"lr": 0.1},
        "model": {"kwargs": {"a": 1}},
        "data": {"path": None},
    }


# ----------------------------------------------------------------------------- mixup / cutmix
NUM_CLASSES = 10


def tiny_resnet(seed: int = 0) -> adaskip.AdaptiveDepthNet:
    torch.manual_seed(seed)
    return adaskip.create_model("resnet34", num_classes=NUM_CLASSES, channels=[8, 16, 32, 64])


def batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _train(tiny_params, **train):
    return tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update=train)})


def test_odd_batch_with_mixup_is_a_config_error(tiny_raw):
    raw = merge_params(tiny_raw, {"train": {"mixup": 0.8, "batch_size": 6, "workers": 2}})
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        parse_params(raw)
    parse_params(merge_params(raw, {"train": {"batch_size": 8}}))
    parse_params(merge_params(raw, {"train": {"mixup": 0.0}}))
    # tune's trials train with tune.workers (0: one process): their per-worker batch counts too, checked once, here
    trials = merge_params(raw, {"train": {"batch_size": 12}, "tune": {"enabled": True, "workers": 4}})
    with pytest.raises(ConfigError, match=r"train\.batch_size 12 // tune\.workers 4 = 3"):
        parse_params(trials)
    parse_params(merge_params(trials, {"tune": {"workers": 0}}))
    parse_params(merge_params(trials, {"tune": {"enabled": False}}))


def test_loss_settings_have_one_source(tiny_params):
    """The loss reads the train section itself: params.yaml's defaults are the library's (label smoothing 0.1)."""
    assert loop.distill_config(tiny_params) is tiny_params.train
    assert DistillConfig().label_smoothing == 0.1 == type(tiny_params.train)().label_smoothing
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)


def test_mixup_changes_what_is_trained(tiny_params):
    """Same seed and batch: one step with mixup gives other parameters than one without; its targets are soft and
    carry label smoothing once (Mixup's), not twice."""
    x, y = batch()
    cfg = DistillConfig(label_smoothing=0.1)
    mixup = loop.make_mixup(_train(tiny_params, mixup=0.8, label_smoothing=0.1), NUM_CLASSES)
    assert loop.make_mixup(tiny_params, NUM_CLASSES) is None
    torch.manual_seed(0)
    mx, my = mixup(x.clone(), y.clone())
    assert my.shape == (len(x), NUM_CLASSES) and torch.allclose(my.sum(1), torch.ones(len(x)))
    assert not torch.equal(mx, x) and (my.max(1).values < 1).all()
    assert my.min() == pytest.approx(0.1 / NUM_CLASSES)  # smoothed once: off-classes get exactly smoothing / classes
    logits = torch.randn(len(x), NUM_CLASSES)
    ref = -(my * torch.log_softmax(logits, 1)).sum(1).mean()
    assert cross_entropy(logits, my, 0.1).item() == pytest.approx(ref.item(), rel=1e-6)

    plain, mixed = tiny_resnet(), tiny_resnet()
    distill_step(plain, x, y, torch.optim.SGD(plain.parameters(), lr=0.1), cfg)
    distill_step(mixed, mx, my, torch.optim.SGD(mixed.parameters(), lr=0.1), cfg)
    diffs = [(a - b).abs().max().item() for a, b in zip(plain.parameters(), mixed.parameters())]
    assert max(diffs) > 1e-4


@pytest.mark.parametrize("distill", [True, False])
def test_fit_trains_on_mixed_soft_targets(tiny_params, monkeypatch, distill):
    """fit mixes every train batch (self-distillation and the baselines alike): the step sees soft targets."""
    seen = []

    class Stop(Exception):
        pass

    def record(model, images, targets, *args, **kwargs):
        seen.append(targets)
        raise Stop

    monkeypatch.setattr(loop, "distill_step" if distill else "plain_step", record)
    with pytest.raises(Stop):
        loop.fit(
            _train(tiny_params, mixup=0.8, cutmix=1.0),
            loop.WorkerEnv(),
            epochs=1,
            mode=loop.SELF_DISTILLATION if distill else loop.FitMode(alone="TTTT"),
        )
    assert seen[0].dim() == 2 and seen[0].shape[1] == 10


# ----------------------------------------------------------------------------- EMA
def test_fit_with_ema_validates_and_ships_the_ema_weights(tiny_params):
    """ema: true: the checkpoint keeps the raw weights under "model" and adds "ema"; the reported validation metrics
    are those of the EMA weights, which differ from the raw ones."""
    p = _train(tiny_params, ema=True, ema_decay=0.8, epochs=1)
    reported = []
    loop.fit(p, loop.WorkerEnv(report=lambda m, s: reported.append((m, s))))
    metrics, state = reported[-1]
    assert set(state["ema"]) == set(state["model"])
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"] if k.endswith("weight"))

    subsets = load_subsets(p.data)
    val = make_loader(subsets.val, p.evaluate.batch_size, shuffle=False, seed=0)

    def val_metrics(weights):
        net = build_from_spec(state["spec"])
        net.load_state_dict(weights)
        return loop.validate(net, val, loop.WorkerEnv(), state["macs"])

    ema_metrics = val_metrics(state["ema"])
    assert {k: metrics[k] for k in ema_metrics} == pytest.approx(ema_metrics)
    saved = state.get("ema") or state["model"]  # what pipelines/train.py ships
    assert saved is state["ema"]


def test_fit_without_ema_has_no_ema_state(tiny_params, monkeypatch):
    reported = []
    monkeypatch.setattr(loop, "diagnostics", lambda *a, **k: {})
    loop.fit(_train(tiny_params, epochs=1), loop.WorkerEnv(report=lambda m, s: reported.append(s)))
    assert "ema" not in reported[-1]


def test_ema_resumes_from_the_checkpoint(tiny_params):
    net, other = tiny_resnet(0), tiny_resnet(1)
    p = _train(tiny_params, ema=True)
    ema = loop.make_ema(net, p, {"ema": other.state_dict(), "model": net.state_dict()})
    assert all(torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(), other.state_dict().values()))
    assert loop.make_ema(net, tiny_params, None) is None
    ema = loop.make_ema(net, p, None)
    ema.update(other, step=10)  # decay per train.ema_decay: moves (1 - decay) of the way
    w, o, n = (m.state_dict()["backbone.fc.weight"] for m in (ema.module, other, net))
    assert torch.allclose(w, n + (1 - p.train.ema_decay) * (o - n), atol=1e-7)


# ----------------------------------------------------------------------------- channels-last
def test_channels_last_gives_the_same_step(tiny_params):
    x, y = batch()
    a, b = tiny_resnet(), tiny_resnet()
    fmt = loop.memory_format(tiny_params, b)
    assert fmt == torch.channels_last and tiny_params.train.channels_last
    b.to(memory_format=fmt)
    assert b.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    cfg = DistillConfig()
    out_a = distill_step(a, x, y, torch.optim.SGD(a.parameters(), lr=0.1), cfg)
    out_b = distill_step(b, x.contiguous(memory_format=fmt), y, torch.optim.SGD(b.parameters(), lr=0.1), cfg)
    assert out_b == pytest.approx(out_a, rel=1e-4, abs=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_channels_last_only_for_convolutional_families(tiny_params):
    vit = adaskip.create_model(
        "deit_tiny_patch16_224",
        num_classes=3,
        img_size=32,
        patch_size=8,
        depth=4,
        embed_dim=32,
        num_heads=2,
        num_stages=2,
    )
    assert loop.memory_format(tiny_params, vit) == torch.contiguous_format
    assert loop.memory_format(_train(tiny_params, channels_last=False), tiny_resnet()) == torch.contiguous_format


def test_fit_feeds_channels_last_batches(tiny_params, monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def record(model, images, *args, **kwargs):
        seen.append(
            (
                images.is_contiguous(memory_format=torch.channels_last),
                model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last),
            )
        )
        raise Stop

    monkeypatch.setattr(loop, "distill_step", record)
    for on in (True, False):
        with pytest.raises(Stop):
            loop.fit(_train(tiny_params, channels_last=on), loop.WorkerEnv(), epochs=1)
    assert seen == [(True, True), (False, False)]


def test_params_yaml_documents_every_train_key():
    shipped_train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    from adaskip.config import TrainParams

    assert set(TrainParams.model_fields) == set(shipped_train)
