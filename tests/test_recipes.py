"""Recipes (params overlays in recipes/, ``adaskip recipe``) and the validation of the knobs they set (what the
loop does with them: tests/test_loop.py). Fast, CPU, no Ray."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from adaskip.build import build_model
from adaskip import cli
from adaskip.config import ConfigError, load_params, merge_params, parse_params
from adaskip.recipes import RECIPES_DIR, apply_recipe, load_overlay, parse_sets, recipe_overlay, shipped
from adaskip.training import DistillConfig, loop

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
    net = build_model(params, num_classes=3)
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
    net = build_model(p, num_classes=1000)
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


# ----------------------------------------------------------------------------- the knobs' validation
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
    """The loss reads the train section itself: params.yaml's defaults are the library's (label smoothing 0.1); a
    swept key no sweep set trains at the library's default (alpha 0.5, T 1.0)."""
    cfg = loop.distill_config(tiny_params)
    assert tiny_params.train.alpha is None and (cfg.alpha, cfg.temperature) == (0.5, 1.0) == (
        DistillConfig().alpha,
        DistillConfig().temperature,
    )
    fixed = tiny_params.model_copy(
        update={"train": tiny_params.train.model_copy(update={"alpha": 0.7, "temperature": 2})}
    )
    assert loop.distill_config(fixed) is fixed.train
    assert DistillConfig().label_smoothing == 0.1 == type(tiny_params.train)().label_smoothing
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)


def test_params_yaml_documents_every_train_key():
    shipped_train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    from adaskip.config import TrainParams

    assert set(TrainParams.model_fields) == set(shipped_train)
