"""The training loop, ``fit``: what each path trains with (a baseline gets the recipe's label smoothing) and the
recipe knobs it applies (what recipes/ sets): mixup/cutmix, EMA and channels-last training. Fast, CPU, no Ray. The
loss and the steps themselves: tests/test_loss_and_step.py."""

from __future__ import annotations

import pytest
import torch

import adaskip
from adaskip.data import load_subsets, make_loader
from adaskip.training import DistillConfig, build_from_spec, cross_entropy, distill_step, loop
from helpers import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

NUM_CLASSES = 10


def tiny_resnet(seed: int = 0) -> adaskip.AdaptiveDepthNet:
    torch.manual_seed(seed)
    return adaskip.create_model("resnet34", num_classes=NUM_CLASSES, channels=[8, 16, 32, 64])


def batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _train(tiny_params, **train):
    return tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update=train)})


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
    vit = tiny_vit(3)
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


# ----------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("teacher", [False, True])
def test_fit_gives_baselines_the_recipes_label_smoothing(tiny_params, monkeypatch, teacher):
    """fit's individually trained paths (CE and KD baseline) receive train.label_smoothing (stops at the first step)."""
    from adaskip.training import loop

    class Seen(Exception):
        pass

    def record(name):
        def step(*args, **kwargs):
            cfg = kwargs.get("cfg") or next((a for a in args if isinstance(a, DistillConfig)), None)
            raise Seen(name, cfg.label_smoothing if cfg is not None else kwargs.get("label_smoothing", 0.0))

        return step

    monkeypatch.setattr(loop, "plain_step", record("plain"))
    monkeypatch.setattr(loop, "kd_step", record("kd"))
    p = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"label_smoothing": 0.1})})
    with pytest.raises(Seen) as seen:
        loop.fit(
            p,
            loop.WorkerEnv(),
            epochs=1,
            mode=loop.FitMode(alone="TTTT", teacher=(lambda images: torch.zeros(len(images), 10)) if teacher else None),
        )
    assert seen.value.args == ("kd" if teacher else "plain", 0.1)
