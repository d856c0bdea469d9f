"""params.yaml validation: every bad value fails before any work, with one message naming the key."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import yaml

from adaskip.build import build_model, check_model, timm_kwargs, tune_splits
from adaskip.config import ConfigError, apply_tuned, load_params, parse_params
from adaskip.errors import AdaskipError
from helpers import PROGRAMS, ROOT, run_stage


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(defaults: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(defaults)
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return raw


def test_shipped_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.data.name == "digits" and p.train.alpha is None  # swept by default
    check_model(p, splits=True)


def test_defaults_are_the_shipped_params(defaults):
    """params.yaml is where the defaults are documented, and config.py's equal them: deleting any key, or a whole
    section, from params.yaml changes nothing."""
    from adaskip.config import Params

    shipped = parse_params(defaults)
    assert Params().model_dump(mode="json") == shipped.model_dump(mode="json")
    for section, keys in defaults.items():
        raw = copy.deepcopy(defaults)
        del raw[section]
        assert parse_params(raw) == shipped, section
        for key in keys:
            raw = copy.deepcopy(defaults)
            del raw[section][key]
            assert parse_params(raw) == shipped, f"{section}.{key}"


@pytest.mark.parametrize(
    "dotted, value, expect",
    [
        ("train.alpah", 0.5, "train.alpah: unknown key"),  # misspelled key
        ("bogus.x", 1, "bogus: unknown key"),  # unknown section
        ("train.alpha", 1.5, "train.alpha"),  # out of range
        ("train.alpha", -0.1, "train.alpha"),
        ("train.epochs", "many", "train.epochs"),  # wrong type
        ("train.epochs", 0, "train.epochs"),
        ("train.temperature", 0, "train.temperature"),
        ("train.scheduler", "exponential", "train.scheduler"),
        ("train.precision", "fp8", "train.precision"),
        ("model.name", "vgg16", "model.name"),  # unknown model
        ("model.split", [0, 2, 3, 1], "model.split"),  # no mandatory block
        ("model.split", [3, 4, 6, 3], "model.split"),  # no skippable block
        ("model.split", [1, 1], "model.split"),  # wrong length
        ("model.kwargs", {"no_such_arg": 1}, "model.kwargs"),
        ("model.kwargs", {"resnet": {"no_such_arg": 1}}, "model.kwargs"),  # in the family's section
        ("model.kwargs", {"resnet": {}, "drop_rate": 0.1}, "model.kwargs: mixes family sections"),
        ("model.name", "vit_base_patch16_224", "model.name / data.image_size"),  # img_size 32 set by hand below
        ("tune.alpha", [0.8, 0.3], "tune.alpha"),
        ("tune.alpha", [0.2, 1.3], "tune.alpha"),
        ("tune.splits", [[2, 2, 3, 2], [0, 1, 1, 1]], "tune.splits"),
        ("tune.splits", "some", "tune.splits"),
        ("evaluate.parallelism", 0, "evaluate.parallelism"),
        ("data.name", "mnist", "data.name"),
        ("data.val_fraction", 0.9, "data"),
    ],
)
def test_bad_values_name_the_key(defaults, dotted, value, expect):
    """Validation rejects a bad key or value; what only building the model finds (a model, split or kwargs that
    cannot be built or run on the data, a tune.splits candidate) build.check_model rejects, with the same line."""
    raw = _with(defaults, dotted, value)
    if value == "vit_base_patch16_224":
        raw = _with(raw, "model.kwargs", {"img_size": 224})  # built for 224 px, given 32 px images
    with pytest.raises(ConfigError) as e:
        check_model(parse_params(raw, "params.yaml"), splits=True, source="params.yaml")
    assert expect in str(e.value), str(e.value)
    assert "params.yaml" in str(e.value)


FAMILIES = {  # name: the stage depths its candidate splits derive from
    "resnet18": [2, 2, 2, 2],
    "resnet50": [3, 4, 6, 3],
    "mobilenetv2_100": [2, 3, 4, 3, 3],
    "deit_tiny_patch16_224": [3, 3, 3, 3],
    "swin_tiny_patch4_window7_224": [2, 2, 6, 2],
}


@pytest.mark.parametrize("name", FAMILIES)
def test_any_family_by_changing_model_name(defaults, name):
    """Changing only model.name validates: kwargs of another family do not apply, ViT/Swin get img_size from
    data.image_size, the sweep's splits follow the model's stage depths (the paper's rule first)."""
    from adaskip.models import candidate_splits, default_split

    p = parse_params(_with(defaults, "model.name", name))
    kwargs = timm_kwargs(p.model, p.data.image_size)
    assert ("channels" in kwargs) == name.startswith("resnet")
    assert kwargs.get("img_size") == (p.data.image_size if name.startswith(("deit", "swin")) else None)
    net = build_model(p)
    assert net.stage_depths == FAMILIES[name]
    assert tune_splits(p) == candidate_splits(FAMILIES[name]) and tune_splits(p)[0] == default_split(FAMILIES[name])


def test_a_model_that_cannot_run_on_the_data_fails_validation_fast(defaults):
    """A forward pass at data.image_size is part of validation: seconds, not a failure in every Ray worker."""
    import time

    check_model(parse_params(defaults))  # imports done
    start = time.monotonic()
    p = parse_params(_with(_with(defaults, "model.name", "vit_base_patch16_224"), "data.image_size", 8), "params.yaml")
    with pytest.raises(
        ConfigError, match="params.yaml: model.name / data.image_size: VisionTransformer cannot run on 3x8x8"
    ):
        check_model(p, source="params.yaml")
    assert time.monotonic() - start < 10


def test_validation_is_the_schema_and_builds_no_model(defaults):
    """Validating params imports neither torch nor timm (a Ray worker or task given validated Params builds nothing
    more than what it trains or evaluates); the model is checked once, explicitly, by the stages that build it."""
    program = [sys.executable, str(PROGRAMS / "validate_only.py")]
    r = subprocess.run(program, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["vgg16", "False", "False"], r.stderr
    p = parse_params(_with(defaults, "tune.splits", [[2, 2, 3, 2], [0, 1, 1, 1]]))
    assert check_model(p).split == [2, 2, 3, 2]  # the model alone is fine
    with pytest.raises(ConfigError, match=r"params: tune.splits: \[0, 1, 1, 1\]: split"):
        check_model(p, splits=True)


@pytest.mark.subprocess
def test_only_the_stages_that_build_a_model_check_it(tmp_path, defaults, monkeypatch):
    """tune checks the model and each listed tune.splits candidate before any work; train checks the model only
    (it trains the split tune chose); evaluate builds the model file's architecture and so does not depend on
    tune.splits at all: a bad candidate fails tune alone."""
    raw = _with(defaults, "tune.splits", [[2, 2, 3, 2], [0, 1, 1, 1]])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))

    monkeypatch.chdir(tmp_path)  # the stages in process: each fails before it would start Ray
    with pytest.raises(ConfigError, match=re.escape("params.yaml: tune.splits: [0, 1, 1, 1]: split")):
        run_stage("tune")
    with pytest.raises(AdaskipError, match="run the tune stage first") as e:
        run_stage("train")
    assert "tune.splits" not in str(e.value)
    with pytest.raises(AdaskipError, match="models/model.pt") as e:  # the first thing it needs: not tune.splits
        run_stage("evaluate")
    assert "tune.splits" not in str(e.value)


def test_tune_splits_null_searches_model_split_only(defaults):
    assert tune_splits(parse_params(_with(defaults, "tune.splits", None))) is None
    assert tune_splits(parse_params(_with(defaults, "tune.splits", [[1, 1, 1, 1]]))) == [[1, 1, 1, 1]]


def test_missing_dataset_path(defaults, tmp_path):
    raw = _with(defaults, "data.name", "cifar10")
    with pytest.raises(ConfigError, match="data.path"):
        parse_params(raw)
    raw["data"]["path"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_params(raw)


def test_malformed_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  alpha: [0.5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "absent.yaml")


@pytest.mark.subprocess
@pytest.mark.parametrize("stage", ["prepare", "train", "tune", "evaluate", "report"])
def test_stage_scripts_fail_cleanly_on_bad_params(tmp_path, defaults, stage):
    """Each stage exits non-zero with one line naming the key, no traceback, and writes nothing."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with(defaults, "train.alpha", 2.0)))
    r = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / f"{stage}.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "train.alpha" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.subprocess
def test_tune_disabled_passes_params_on_and_train_takes_the_chosen_config(tmp_path, defaults, monkeypatch):
    """`tune.enabled: false`: the tune stage runs no sweep and records only that; train trains params.yaml's alpha,
    and a key it leaves null at its default (T 1.0, the paper's split); without the file, train names the stage."""
    raw = _with(_with(defaults, "tune.enabled", False), "train.alpha", 0.7)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    tuned = run_stage("tune")  # in process: no sweep, no Ray
    assert (tuned.alpha, tuned.temperature, tuned.split, tuned.objective) == (0.7, 1.0, [2, 2, 3, 2], None)
    assert tuned.summary() == "no sweep (tune.enabled: false): train trains alpha 0.70, T 1.00, split [2, 2, 3, 2]"
    best = json.loads((tmp_path / "results" / "best_config.json").read_text())
    assert best == {"source": "params.yaml", "objective": None, "swept": []}
    settled = apply_tuned(parse_params(raw), best)
    assert (settled.train.alpha, settled.train.temperature, settled.model.split) == (0.7, 1.0, None)
    (tmp_path / "results" / "best_config.json").unlink()
    with pytest.raises(AdaskipError, match="run the tune stage first"):
        run_stage("train")


def test_a_value_set_is_the_value_trained(defaults):
    """A swept key (train.alpha, train.temperature, model.split) left null is the sweep's to choose; a value in
    params.yaml fixes it: the sweep does not search it, and a choice made for another value is refused, never
    applied."""
    from ray import tune

    from adaskip.orchestration.tune import search_space

    swept = parse_params(defaults)
    assert swept.swept() == ["train.alpha", "train.temperature", "model.split"]
    space = search_space(swept)
    assert all(isinstance(space[k], (tune.search.sample.Float, tune.search.sample.Categorical)) for k in space)
    choice = {"alpha": 0.3, "temperature": 2.0, "split": [1, 2, 3, 1], "source": "tune"}
    tuned = apply_tuned(swept, choice)
    assert (tuned.train.alpha, tuned.train.temperature, tuned.model.split) == (0.3, 2.0, [1, 2, 3, 1])
    with pytest.raises(ConfigError, match=r"best_config.json: train.alpha"):
        apply_tuned(swept, {**choice, "alpha": 3})

    fixed = parse_params(_with(_with(defaults, "train.alpha", 0.9), "model.split", [1, 2, 3, 1]))
    assert fixed.swept() == ["train.temperature"]
    space = search_space(fixed)
    assert (space["alpha"], space["split"]) == (0.9, [1, 2, 3, 1])  # constants, not dimensions
    assert isinstance(space["temperature"], tune.search.sample.Float)
    trained = apply_tuned(fixed, {**choice, "alpha": 0.9, "split": [1, 2, 3, 1]})
    assert (trained.train.alpha, trained.train.temperature, trained.model.split) == (0.9, 2.0, [1, 2, 3, 1])
    with pytest.raises(ConfigError, match=r"params.yaml fixes train.alpha at 0.9: re-run the tune stage"):
        apply_tuned(fixed, choice)  # chosen when alpha was swept: stale, not silently replaced
    assert parse_params(defaults).settled().train.alpha == 0.5  # no sweep: the paper's default


def test_a_fixed_split_with_listed_candidates_is_refused(defaults):
    raw = _with(_with(defaults, "model.split", [2, 2, 3, 2]), "tune.splits", [[2, 2, 3, 2], [1, 2, 3, 1]])
    with pytest.raises(ConfigError, match=r"params: model.split: \[2, 2, 3, 2\] fixes the split, but tune.splits"):
        check_model(parse_params(raw), splits=True)
    check_model(parse_params(_with(raw, "tune.enabled", False)), splits=True)  # no sweep: nothing contradicts


@pytest.mark.subprocess
def test_tune_with_every_swept_key_fixed_runs_no_sweep(tmp_path, defaults, monkeypatch):
    raw = _with(_with(_with(defaults, "train.alpha", 0.7), "train.temperature", 2.0), "model.split", [1, 2, 3, 1])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    tuned = run_stage("tune")  # no Ray started: nothing to search
    assert (tuned.alpha, tuned.temperature, tuned.split, tuned.swept) == (0.7, 2.0, [1, 2, 3, 1], [])
    assert "no sweep (train.alpha, train.temperature, model.split fixed in params.yaml)" in tuned.summary()
