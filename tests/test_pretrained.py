"""model.pretrained: plain timm weights (local .pth / .safetensors, or a timm hub name) as the start of training.

No Ray: ``fit`` runs in this process. The last test trains a plain timm model on digits, saves it, and shows
that adaptive-depth training started from it reaches the from-scratch super-net accuracy in fewer epochs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml
from torch import nn

from adaskip.build import check_model
from adaskip.config import ConfigError, Params, parse_params
from adaskip.data import load_subsets, make_loader
from adaskip.errors import AdaskipError
from adaskip.models import PretrainedError, SkipAwareNorm, create_model, load_pretrained
from adaskip.models import pretrained as pretrained_mod
from adaskip.models.adaptive import timm_key
from adaskip.training import loop
from adaskip.training.loop import WorkerEnv, fit
from helpers import ROOT, TINY, merge

NAME = "resnet34"
KWARGS = TINY["model"]["kwargs"]["resnet"]  # the TINY architecture: narrow channels, 16 px digits
SIZE = TINY["data"]["image_size"]
NUM_CLASSES = 10


def _plain(num_classes: int = NUM_CLASSES, seed: int = 0, name: str = NAME, **kwargs) -> nn.Module:
    """A plain timm model with random norm statistics and affine parameters (timm zero-inits some gammas,
    which would hide a norm set that did not load)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **(kwargs or KWARGS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in (
                    (m.weight, 0.5, 1.5),
                    (m.bias, -0.3, 0.3),
                    (m.running_mean, -0.2, 0.2),
                    (m.running_var, 0.5, 1.5),
                ):
                    t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
    return model.eval()


def _adaptive(num_classes: int = NUM_CLASSES) -> nn.Module:
    torch.manual_seed(123)
    return create_model(NAME, num_classes=num_classes, **KWARGS)


def _x() -> torch.Tensor:
    return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def plain() -> nn.Module:
    return _plain()


# --------------------------------------------------------------------------------------------------
# loading local files
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "pt-wrapped-state_dict", "pth-wrapped-model", "pth-ddp"])
def test_local_file_equals_plain_timm(plain, tmp_path, fmt):
    sd = plain.state_dict()
    path = tmp_path / f"w.{fmt.split('-')[0]}"
    if fmt == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt.endswith("state_dict"):
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif fmt.endswith("model"):
        torch.save({"model": sd}, path)
    elif fmt.endswith("ddp"):
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    model = load_pretrained(_adaptive(), str(path)).eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=1e-5)
        assert not torch.allclose(model(x, skip="TTTT"), plain(x), atol=1e-3)  # sub-networks really differ
    wrapped = [(p, m) for p, m in model.backbone.named_modules() if isinstance(m, SkipAwareNorm)]
    assert wrapped
    for prefix, norm in wrapped:
        for which in (norm.full, norm.skipped):
            for key, value in which.state_dict().items():
                assert torch.equal(value, sd[f"{prefix}.{key}"]), (prefix, key)
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[timm_key(model, key)]), key


@pytest.mark.parametrize("other", [7, 0])  # another class count; a headless checkpoint (reset_classifier(0))
def test_other_class_count_reinitialises_head(tmp_path, caplog, other):
    src = _plain(num_classes=other, seed=2)
    path = tmp_path / "other.pth"
    torch.save(src.state_dict(), path)
    model = _adaptive()
    fresh = {k: v.clone() for k, v in model.backbone.fc.state_dict().items()}
    with caplog.at_level(logging.INFO):
        load_pretrained(model, str(path))
    for k, v in model.backbone.fc.state_dict().items():
        assert torch.equal(v, fresh[k]), k  # the model's own fresh head, 10 classes
    assert model.backbone.fc.out_features == NUM_CLASSES
    sd = src.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("backbone.fc."):
            assert torch.equal(value, sd[timm_key(model, key)]), key
    lines = [r for r in caplog.records if "head re-initialised" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "model.pretrained" in lines[0].getMessage() and str(path) in lines[0].getMessage()
    assert (f"{other} classes" if other else "has none") in lines[0].getMessage()


def test_same_class_count_logs_no_reinit(plain, tmp_path, caplog):
    path = tmp_path / "w.pth"
    torch.save(plain.state_dict(), path)
    with caplog.at_level(logging.INFO):
        load_pretrained(_adaptive(), str(path))
    assert not any("re-initialised" in r.getMessage() for r in caplog.records)


def _unchanged(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(
        timm.create_model("resnet18", num_classes=NUM_CLASSES, **KWARGS).state_dict(), str(path)
    )
    model = _adaptive()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        PretrainedError,
        match=r"^model\.pretrained: .*resnet18\.safetensors does not fit the model "
        r"resnet34 \(.*(missing|unexpected) keys.*layer",
    ):
        load_pretrained(model, str(path))
    assert _unchanged(model, snapshot)  # no partial load

    wide = tmp_path / "wide.pth"  # same keys, other widths: a shape mismatch outside the head is an error
    torch.save(timm.create_model(NAME, num_classes=NUM_CLASSES, channels=[16, 32, 64, 128]).state_dict(), wide)
    with pytest.raises(
        PretrainedError, match=r"^model\.pretrained: .*wide\.pth does not fit .*shape mismatches.*conv1\.weight"
    ):
        load_pretrained(model, str(wide))
    assert _unchanged(model, snapshot)


def test_missing_corrupt_and_foreign_files(tmp_path):
    assert issubclass(PretrainedError, AdaskipError)
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedError, match=rf"^model\.pretrained: {missing} does not exist"):
        load_pretrained(_adaptive(), str(missing))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedError, match=r"^model\.pretrained: .*bad\.pth is not a readable weights file"):
        load_pretrained(_adaptive(), str(bad))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(PretrainedError, match=r"^model\.pretrained: .*bad\.safetensors is not a readable"):
        load_pretrained(_adaptive(), str(bad_st))
    nested = tmp_path / "nested.pth"
    torch.save({"epoch": 1, "lr": 0.1}, nested)
    with pytest.raises(PretrainedError, match=r"holds no state dict"):
        load_pretrained(_adaptive(), str(nested))
    adaskip_file = tmp_path / "model.pth"
    torch.save({"spec": {"name": NAME}, "state_dict": _adaptive().state_dict()}, adaskip_file)
    with pytest.raises(PretrainedError, match=r"adaskip model file, not plain timm weights"):
        load_pretrained(_adaptive(), str(adaskip_file))
    with pytest.raises(PretrainedError, match=r"^model\.pretrained: 'no_such_net' is neither a local weights file"):
        load_pretrained(_adaptive(), "no_such_net")


# --------------------------------------------------------------------------------------------------
# timm hub names without a network
# --------------------------------------------------------------------------------------------------
def test_hub_name_offline_is_a_fast_clear_error(monkeypatch, tmp_path):
    """Offline only the local hub cache is tried (here an empty one), so the error comes at once."""
    from huggingface_hub import constants

    monkeypatch.setattr(pretrained_mod, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    before = constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(
        PretrainedError,
        match=r"^model\.pretrained: cannot download timm weights 'resnet34\.a1_in1k' "
        r"offline: pass a local .*\.safetensors file",
    ):
        load_pretrained(_adaptive(), "resnet34.a1_in1k", **KWARGS)
    assert time.monotonic() - start < 10
    assert constants.HF_HUB_OFFLINE == before  # restored


def test_hub_name_on_this_machine(tmp_path):
    """The real check, unpatched: this machine has no network, so the error must come in seconds, not after
    huggingface_hub's minute of retries."""
    if pretrained_mod._hub_reachable():
        pytest.skip("the hub is reachable here")
    start = time.monotonic()
    with pytest.raises(
        PretrainedError, match=r"^model\.pretrained: cannot (download|load) timm weights 'hf-hub:timm/resnet34"
    ):
        load_pretrained(_adaptive(), "hf-hub:timm/resnet34.a1_in1k", **KWARGS)
    assert time.monotonic() - start < 15


# --------------------------------------------------------------------------------------------------
# params validation
# --------------------------------------------------------------------------------------------------
def test_params_validation(tiny_raw, tmp_path, monkeypatch):
    assert parse_params(tiny_raw).model.pretrained is None
    assert "pretrained: null" in (ROOT / "params.yaml").read_text()
    with pytest.raises(ConfigError, match=r"params: model\.pretrained: .*missing\.pth does not exist"):
        check_model(parse_params(merge(tiny_raw, {"model": {"pretrained": str(tmp_path / "missing.pth")}})))
    with pytest.raises(ConfigError, match=r"params: model\.pretrained: 'not_a_timm_net' is neither"):
        check_model(parse_params(merge(tiny_raw, {"model": {"pretrained": "not_a_timm_net"}})))
    (tmp_path / "w.pth").write_bytes(b"never read at validation")  # validation does not load weights
    monkeypatch.chdir(tmp_path)
    p = parse_params(merge(tiny_raw, {"model": {"pretrained": "w.pth"}}))
    check_model(p)
    assert p.model.pretrained == str(tmp_path / "w.pth")  # absolute: Ray workers run with another cwd
    assert (
        parse_params(merge(tiny_raw, {"model": {"pretrained": "resnet34.a1_in1k"}})).model.pretrained
        == "resnet34.a1_in1k"
    )
    assert parse_params(merge(tiny_raw, {"model": {"pretrained": None}})).model.pretrained is None


# --------------------------------------------------------------------------------------------------
# training: pretrained start vs scratch
# --------------------------------------------------------------------------------------------------
PRETRAIN_EPOCHS = 6
EPOCHS = 4


def _pretrain_plain(params: Params, path: Path) -> float:
    """A plain timm model (TINY architecture) trained with CE on the digits train split; saved to ``path``;
    returns its val accuracy."""
    torch.manual_seed(0)
    subsets = load_subsets(params.data)
    model = timm.create_model(NAME, num_classes=subsets.num_classes, **KWARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, PRETRAIN_EPOCHS)
    train = make_loader(subsets.train, 128, shuffle=True, seed=0, drop_last=True)
    for _ in range(PRETRAIN_EPOCHS):
        model.train()
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in make_loader(subsets.val, 256, shuffle=False, seed=0):
            correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    torch.save(model.state_dict(), path)
    return 100 * correct / n


def _epochs_to(curve: list[float], threshold: float):
    return next((i + 1 for i, acc in enumerate(curve) if acc >= threshold), None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    raw = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    scratch_params = Params.model_validate(raw)
    path = tmp_path_factory.mktemp("pretrained") / "plain_tiny_resnet34.pth"
    plain_acc = _pretrain_plain(scratch_params, path)
    pretrained_params = Params.model_validate(merge(raw, {"model": {"pretrained": str(path)}}))
    out = {"plain_acc": plain_acc, "path": path, "params": pretrained_params}
    for label, params in (("scratch", scratch_params), ("pretrained", pretrained_params)):
        curve, states = [], []
        fit(
            params,
            WorkerEnv(report=lambda m, s, c=curve, st=states: (c.append(m["val_acc_super"]), st.append(s))),
            epochs=EPOCHS,
        )
        out[label], out[label + "_states"] = curve, states
    return out


def test_pretrained_start_reaches_scratch_accuracy_in_fewer_epochs(runs):
    threshold = runs["scratch"][-1]
    scratch_n, pre_n = _epochs_to(runs["scratch"], threshold), _epochs_to(runs["pretrained"], threshold)
    print(f"\nplain timm model pretrained {PRETRAIN_EPOCHS} epochs on digits: val acc {runs['plain_acc']:.1f}%")
    print(
        f"val super-net accuracy per epoch ({EPOCHS} epochs of adaptive-depth training, threshold {threshold:.1f}% "
        "= the scratch run's final):"
    )
    for label, n in (("scratch", scratch_n), ("pretrained", pre_n)):
        print(f"  {label:>10}: {', '.join(f'{a:.1f}' for a in runs[label])}  -> epochs to threshold: {n}")
    assert scratch_n is not None and pre_n is not None, runs
    assert pre_n < scratch_n, runs
    # the weights really came from the file: epoch 1 starts far above an untrained net's 10%
    assert runs["pretrained"][0] > runs["scratch"][0]


def test_resumed_run_keeps_its_checkpoint(runs, monkeypatch):
    """A resumed run with model.pretrained set does not reload the pretrained weights: the checkpoint wins."""

    def boom(*args, **kwargs):
        raise AssertionError("pretrained weights reloaded on resume")

    monkeypatch.setattr(loop, "load_pretrained", boom)
    state = runs["scratch_states"][-2]  # resume at the last epoch: one epoch runs from the scratch checkpoint
    reported = []
    fit(
        runs["params"],
        WorkerEnv(report=lambda m, s: reported.append(m["val_acc_super"]), resume_state=state),
        epochs=EPOCHS,
    )
    assert len(reported) == 1  # only the last epoch ran, from the scratch checkpoint
