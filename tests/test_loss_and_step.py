"""Self-distillation loss and train step (docs/method.md section 4, steps 1-4).

Reference values are written out with plain torch ops (exp / sum / log), independently of
``adaskip.training``; the train step is checked against one backward of the whole objective, and
the DDP path against one process on the joint batch.
"""

from __future__ import annotations

import math
import multiprocessing
import traceback

import pytest
import torch
import torch.nn.functional as F

import adaskip
import helpers
from adaskip.training import (
    DistillConfig,
    Precision,
    cross_entropy,
    distill_step,
    distillation_terms,
    feature_loss,
    kd_loss,
    kd_step,
    plain_step,
    unwrap,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

NUM_CLASSES = 5


# ----------------------------------------------------------------------------- helpers
def tiny_vit(seed: int = 0) -> adaskip.AdaptiveDepthNet:
    return helpers.tiny_vit(NUM_CLASSES, seed)


def batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def ref_softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def ref_kd(super_logits, base_logits, temperature=1.0, top_k=None):
    """T^2 * mean_batch sum_c p_c (log p_c - log q_c), p from the super-net's top-k classes."""
    s, b = super_logits.detach().double(), base_logits.double()
    if top_k is not None:
        idx = torch.argsort(s, dim=1, descending=True)[:, :top_k]
        s, b = torch.gather(s, 1, idx), torch.gather(b, 1, idx)
    p, q = ref_softmax(s / temperature), ref_softmax(b / temperature)
    return temperature**2 * (p * (torch.log(p) - torch.log(q))).sum() / s.shape[0]


def ref_ce(logits, targets, label_smoothing=0.0):
    logp = torch.log(ref_softmax(logits.double()))
    if targets.dim() == 2:  # soft targets
        return -(targets.double() * logp).sum(1).mean()
    nll = -logp[torch.arange(len(targets)), targets]
    uniform = -logp.mean(1)
    return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unwrap(model).named_parameters()}


def base_unused_names(net: adaskip.AdaptiveDepthNet) -> set[str]:
    """Parameters the base-net (all stages skipped) never touches: the skippable blocks and the
    regular ("full") norm set of every skip-aware norm."""
    ids = set()
    for i in range(net.num_stages):
        for module in net.skippable_blocks(i) + [n.full for n in net.skip_aware_norms(i)]:
            ids.update(id(p) for p in module.parameters())
    return {name for name, p in net.named_parameters() if id(p) in ids}


def assert_params_close(a: dict, b: dict, atol: float, names=None) -> None:
    names = sorted(a) if names is None else sorted(names)
    worst = max(names, key=lambda k: (a[k] - b[k]).abs().max().item())
    diff = (a[worst] - b[worst]).abs().max().item()
    assert diff <= atol, f"max |diff| {diff:.3e} > {atol:.0e} at {worst}"


# ----------------------------------------------------------------------------- kd_loss
def test_kd_loss_two_class_by_hand():
    # p = softmax(log 1, log 3) = (1/4, 3/4), q = softmax(0, 0) = (1/2, 1/2)
    s = torch.tensor([[0.0, math.log(3.0)]])
    b = torch.zeros(1, 2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kd_loss(s, b).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("top_k", [None, 2])
def test_kd_loss_matches_reference(temperature, top_k):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, generator=g) * 3
    b = torch.randn(4, 6, generator=g) * 3
    got = kd_loss(s, b, temperature, top_k)
    assert got.item() == pytest.approx(ref_kd(s, b, temperature, top_k).item(), rel=1e-5, abs=1e-6)
    assert got.item() > 0


def test_kd_loss_top_k_uses_super_net_classes():
    # super-net's top-2 are classes {0, 1}; the base-net's are {2, 3}. Over {0, 1} the base-net
    # agrees exactly with the super-net (same logit gap), so the top-2 KD is zero only if the
    # indices come from the super logits.
    s = torch.tensor([[5.0, 4.0, 0.0, -3.0]])
    b = torch.tensor([[1.0, 0.0, 9.0, 8.0]])
    assert kd_loss(s, b, top_k=2).item() == pytest.approx(0.0, abs=1e-6)
    idx = torch.tensor([[2, 3]])  # the base-net's top-2 would not give zero
    assert ref_kd(s.gather(1, idx), b.gather(1, idx)).item() > 0.1
    assert kd_loss(s, b, top_k=None).item() > 1.0


def test_kd_loss_temperature_scaling():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 1.0, 0.5]])
    # T^2 factor: with T=2 the KL is taken between the softened distributions, times 4
    kl_t2 = ref_kd(s / 2, b / 2).item()
    assert kd_loss(s, b, temperature=2.0).item() == pytest.approx(4 * kl_t2, rel=1e-5)


def test_kd_loss_top_k_at_least_classes_is_all_classes():
    g = torch.Generator().manual_seed(3)
    s, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    assert kd_loss(s, b, top_k=4).item() == pytest.approx(kd_loss(s, b).item(), rel=1e-6)
    assert kd_loss(s, b, top_k=10).item() == pytest.approx(kd_loss(s, b).item(), rel=1e-6)


@pytest.mark.parametrize("top_k", [None, 2])
def test_kd_loss_zero_for_equal_logits(top_k):
    z = torch.randn(5, 7)
    assert kd_loss(z, z.clone(), 2.0, top_k).abs().item() < 1e-6


def test_kd_loss_no_gradient_to_teacher():
    s = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 6, requires_grad=True)
    kd_loss(s, b, 2.0, 3).backward()
    assert s.grad is None
    assert b.grad is not None and b.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- distillation_terms
def _logits(seed=0, n=6, c=NUM_CLASSES):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, c, generator=g, requires_grad=True),
        torch.randn(n, c, generator=g, requires_grad=True),
        torch.randint(0, c, (n,), generator=g),
    )


def test_distillation_terms_combination():
    s, b, y = _logits()
    g = torch.Generator().manual_seed(5)
    sf = [torch.randn(6, 3, 4, generator=g), torch.randn(6, 8, generator=g)]
    bf = [torch.randn(6, 3, 4, generator=g, requires_grad=True), torch.randn(6, 8, generator=g, requires_grad=True)]
    cfg = DistillConfig(
        alpha=0.3, temperature=2.0, top_k=3, feature_weight=0.5, base_ce_weight=0.2, label_smoothing=0.0
    )
    t = distillation_terms(s, b, y, cfg, sf, bf)

    feat_ref = (((bf[0] - sf[0]) ** 2).mean() + ((bf[1] - sf[1]) ** 2).mean()) / 2
    kd_ref = ref_kd(s, b, 2.0, 3)
    assert t.feat.item() == pytest.approx(feat_ref.item(), rel=1e-5)
    assert t.kd.item() == pytest.approx(kd_ref.item(), rel=1e-5)
    assert t.super_ce.item() == pytest.approx(ref_ce(s, y).item(), rel=1e-5)
    assert t.base_ce.item() == pytest.approx(ref_ce(b, y).item(), rel=1e-5)
    assert t.super_objective.item() == pytest.approx(0.3 * ref_ce(s, y).item(), rel=1e-5)
    base_ref = 0.7 * (kd_ref + 0.5 * feat_ref) + 0.2 * ref_ce(b, y)
    assert t.base_objective.item() == pytest.approx(base_ref.item(), rel=1e-5)
    assert t.total.item() == pytest.approx(t.super_objective.item() + t.base_objective.item(), rel=1e-6)
    assert set(t.as_floats()) == {"super_ce", "kd", "feat", "base_ce", "total"}

    # the feature term is distilled from the super-net: no gradient reaches super features
    sf_g = [f.clone().requires_grad_() for f in sf]
    feature_loss(sf_g, bf).backward()
    assert all(f.grad is None for f in sf_g) and all(f.grad is not None for f in bf)


def test_distillation_terms_default_is_paper_loss():
    s, b, y = _logits(1)
    t = distillation_terms(s, b, y, DistillConfig(label_smoothing=0.0))
    assert t.feat.item() == 0.0
    assert t.super_objective.item() == pytest.approx(0.5 * ref_ce(s, y).item(), rel=1e-5)
    # the base-net gets no CE term by default
    assert t.base_objective.item() == pytest.approx(0.5 * ref_kd(s, b).item(), rel=1e-5)


def test_distillation_terms_without_self_distillation():
    s, b, y = _logits(2)
    t = distillation_terms(
        s,
        b,
        y,
        DistillConfig(alpha=0.4, self_distillation=False, base_ce_weight=0.7, feature_weight=1.0, label_smoothing=0.0),
    )
    assert t.kd.item() == 0.0
    assert t.base_objective.item() == pytest.approx(0.6 * ref_ce(b, y).item(), rel=1e-5)
    t.base_objective.backward()
    assert s.grad is None and b.grad is not None


def test_label_smoothing():
    s, b, y = _logits(3)
    t = distillation_terms(s, b, y, DistillConfig(label_smoothing=0.1))
    assert t.super_ce.item() == pytest.approx(ref_ce(s, y, 0.1).item(), rel=1e-5)
    assert t.super_ce.item() != pytest.approx(ref_ce(s, y).item(), rel=1e-3)


def test_soft_targets():
    s, b, y = _logits(4)
    g = torch.Generator().manual_seed(9)
    soft = torch.softmax(torch.randn(6, NUM_CLASSES, generator=g), dim=1)  # mixup-like probabilities
    assert cross_entropy(s, soft).item() == pytest.approx(ref_ce(s, soft).item(), rel=1e-5)
    one_hot = F.one_hot(y, NUM_CLASSES).float()
    assert cross_entropy(s, one_hot).item() == pytest.approx(cross_entropy(s, y).item(), rel=1e-5)
    t = distillation_terms(s, b, soft, DistillConfig(alpha=0.25, base_ce_weight=0.5, label_smoothing=0.0))
    assert t.super_objective.item() == pytest.approx(0.25 * ref_ce(s, soft).item(), rel=1e-5)
    ref = 0.75 * ref_kd(s, b) + 0.5 * ref_ce(b, soft)
    assert t.base_objective.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(alpha=-0.1),
        dict(alpha=1.01),
        dict(temperature=0.0),
        dict(temperature=-1.0),
        dict(top_k=0),
        dict(top_k=-3),
        dict(feature_weight=-1.0),
        dict(base_ce_weight=-0.5),
    ],
)
def test_distill_config_rejects(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
        DistillConfig(**kwargs)


def test_distill_config_bounds_weigh_one_side_only():
    """alpha's bounds are valid and mean what they say: 0 trains the base-net alone, 1 the super-net alone."""
    s, b, y = _logits()
    base_only = distillation_terms(s, b, y, DistillConfig(alpha=0.0, label_smoothing=0.0))
    assert base_only.super_objective.item() == 0 and base_only.base_objective.item() > 0
    super_only = distillation_terms(s, b, y, DistillConfig(alpha=1.0, temperature=0.5, top_k=1, label_smoothing=0.0))
    assert super_only.base_objective.item() == 0 and super_only.super_objective.item() > 0


# ----------------------------------------------------------------------------- distill_step
STEP_CONFIGS = [
    DistillConfig(label_smoothing=0.0),
    DistillConfig(alpha=0.3, temperature=2.0, top_k=3, feature_weight=0.5, base_ce_weight=0.2, label_smoothing=0.1),
]


def manual_objective(net, x, y, cfg: DistillConfig):
    """The whole objective with ONE graph: alpha*CE(super) + (1-alpha)*(KD + w*feat) + w_ce*CE(base)."""
    s, sf = net(x, skip="FF", return_features=True)
    b, bf = net(x, skip="TT", return_features=True)
    feat = sum(((bb - ss.detach()) ** 2).mean() for ss, bb in zip(sf, bf)) / len(sf)
    total = (
        cfg.alpha * ref_ce(s, y, cfg.label_smoothing)
        + (1 - cfg.alpha) * (ref_kd(s, b, cfg.temperature, cfg.top_k) + cfg.feature_weight * feat)
        + cfg.base_ce_weight * ref_ce(b, y, cfg.label_smoothing)
    )
    return total


@pytest.mark.parametrize("cfg", STEP_CONFIGS, ids=["default", "topk-T2-feat-ce-ls"])
def test_distill_step_is_gradient_of_whole_objective(cfg):
    x, y = batch()
    model = tiny_vit()
    before = params(model)
    metrics = distill_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.5), cfg)
    stepped = params(model)

    ref = tiny_vit()
    assert_params_close(params(ref), before, 0.0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt.zero_grad()
    total = manual_objective(ref, x, y, cfg)
    total.float().backward()
    opt.step()

    assert metrics["total"] == pytest.approx(total.item(), rel=1e-5)
    assert_params_close(stepped, params(ref), atol=2e-6)
    # the step moved both the skippable sub-path (super-net CE) and the base-only norm set (KD)
    net = unwrap(model)
    moved = {k: (stepped[k] - before[k]).abs().max().item() for k in stepped}
    assert all(moved[k] > 1e-5 for k in base_unused_names(net))
    assert any(moved[k] > 1e-5 for k in stepped if ".skipped." in k)
    assert {"super_correct", "base_correct"} <= set(metrics)


def test_distill_step_reduces_loss():
    x, y = batch(16, seed=2)
    model = tiny_vit(1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cfg = DistillConfig(temperature=2.0, label_smoothing=0.0)
    history = [distill_step(model, x, y, opt, cfg) for _ in range(30)]
    first, last = history[0], history[-1]
    assert last["total"] < 0.5 * first["total"], [round(h["total"], 3) for h in history]
    assert last["super_ce"] < 0.5 * first["super_ce"]
    assert last["super_correct"] >= 12


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_distill_step_amp_cpu(dtype):
    x, y = batch()
    model = tiny_vit()
    before = params(model)
    precision = Precision(dtype)
    scaler = precision.scaler(x.device)
    assert (scaler is not None) == (dtype == "fp16")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        metrics = distill_step(model, x, y, opt, DistillConfig(top_k=3, label_smoothing=0.0), precision, scaler)
        assert all(math.isfinite(v) for v in metrics.values()), metrics
    after = params(model)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert max((after[k] - before[k]).abs().max().item() for k in after) > 1e-4
    # the autocast context really lowers precision
    with precision.autocast(x.device):
        assert model(x).dtype == (torch.bfloat16 if dtype == "bf16" else torch.float16)


def test_kd_step_distils_a_separate_teacher_into_one_sub_network():
    """A KD baseline's step: the gradient of (1 - alpha) * KD(teacher, student) + w_ce * CE(student) on the student's
    sub-network only; the teacher is not touched."""
    x, y = batch()
    teacher, model, ref = tiny_vit(1), tiny_vit(), tiny_vit()
    t_before, before = params(teacher), params(model)
    cfg = DistillConfig(alpha=0.3, temperature=2.0, base_ce_weight=0.2, label_smoothing=0.0)
    metrics = kd_step(
        model,
        lambda images: teacher(images, skip="FF"),
        x,
        y,
        torch.optim.SGD(model.parameters(), lr=0.5),
        cfg,
        skip="TT",
    )
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt.zero_grad()
    student = ref(x, skip="TT")
    total = (1 - cfg.alpha) * ref_kd(teacher(x, skip="FF").detach(), student, 2.0) + 0.2 * ref_ce(student, y)
    total.backward()
    opt.step()
    assert metrics["loss"] == pytest.approx(total.item(), rel=1e-5)
    assert_params_close(params(model), params(ref), atol=2e-6)
    assert_params_close(params(teacher), t_before, 0.0)
    moved = {k: (params(model)[k] - before[k]).abs().max().item() for k in before}
    assert all(moved[k] == 0 for k in base_unused_names(unwrap(model)))  # only the TT sub-network trains
    # without a teacher signal it is a different objective: plain CE moves the student elsewhere
    plain = tiny_vit()
    plain_step(plain, x, y, torch.optim.SGD(plain.parameters(), lr=0.5), skip="TT")
    assert max((params(plain)[k] - params(model)[k]).abs().max().item() for k in before) > 1e-4


def test_plain_step_on_timm_model():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "deit_tiny_patch16_224", num_classes=NUM_CLASSES, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2
    )
    x, y = batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = plain_step(model, x, y, opt)
    for _ in range(10):
        last = plain_step(model, x, y, opt)
    assert last["loss"] < first["loss"]


def test_plain_step_uses_the_recipes_label_smoothing():
    """An individually trained baseline gets train.label_smoothing as the super-net's CE does in distill_step:
    its loss and its update are those of CE with that smoothing, not of plain CE."""
    x, y = batch()
    model, ref = tiny_vit(), tiny_vit()
    out = plain_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.5), skip="TT", label_smoothing=0.1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    logits = ref(x, skip="TT")
    expected = ref_ce(logits, y, 0.1)
    assert out["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"] != pytest.approx(ref_ce(logits, y).item(), rel=1e-3)
    expected.backward()
    opt.step()
    assert_params_close(params(model), params(ref), atol=2e-6)
    unsmoothed = tiny_vit()  # the default is no smoothing
    out = plain_step(unsmoothed, x, y, torch.optim.SGD(unsmoothed.parameters(), lr=0.5), skip="TT")
    assert out["loss"] == pytest.approx(ref_ce(logits, y).item(), rel=1e-5)


# ----------------------------------------------------------------------------- DDP (gloo, 2 processes)
DDP_STEPS = 3
DDP_CONFIGS = {
    "default": DistillConfig(temperature=2.0, top_k=3, label_smoothing=0.0),
    "feat": DistillConfig(alpha=0.3, feature_weight=0.5, base_ce_weight=0.2, label_smoothing=0.0),
}
DDP_LR = 0.2


def _ddp_worker(rank: int, world: int, out: str) -> None:
    try:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
        x, y = batch()
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        for name, cfg in DDP_CONFIGS.items():
            model = DistributedDataParallel(tiny_vit(), find_unused_parameters=True)
            opt = torch.optim.SGD(model.parameters(), lr=DDP_LR, momentum=0.9)
            for _ in range(DDP_STEPS):
                distill_step(model, xs, ys, opt, cfg)
            torch.save(params(model), f"{out}/{name}-rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        with open(f"{out}/error-rank{rank}.txt", "w") as f:
            f.write(traceback.format_exc())
        raise


def _single_process(cfg: DistillConfig, x, y):
    model = tiny_vit()
    opt = torch.optim.SGD(model.parameters(), lr=DDP_LR, momentum=0.9)
    for _ in range(DDP_STEPS):
        distill_step(model, x, y, opt, cfg)
    return params(model)


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory):
    """Run the 2-process job once; {config: (rank0 params, rank1 params)}."""
    out = tmp_path_factory.mktemp("ddp")
    # fork: the children reuse the already imported torch/timm (spawn re-imports them, ~30 s here)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ddp_worker, args=(rank, 2, str(out))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = [f.read_text() for f in sorted(out.glob("error-rank*.txt"))]
    assert not errors and all(p.exitcode == 0 for p in procs), (
        f"exit codes {[p.exitcode for p in procs]}\n" + "\n".join(errors)
    )
    return {name: tuple(torch.load(out / f"{name}-rank{r}.pt") for r in range(2)) for name in DDP_CONFIGS}


@pytest.mark.ddp
@pytest.mark.parametrize("name", list(DDP_CONFIGS))
def test_ddp_matches_single_process_on_joint_batch(ddp_result, name):
    rank0, rank1 = ddp_result[name]
    x, y = batch()
    joint = _single_process(DDP_CONFIGS[name], x, y)
    assert_params_close(rank0, joint, atol=1e-5)
    assert_params_close(rank1, joint, atol=1e-5)
    # the check can fail: training on one rank's half alone ends elsewhere
    half = _single_process(DDP_CONFIGS[name], x[:4], y[:4])
    assert max((half[k] - joint[k]).abs().max().item() for k in joint) > 1e-3


@pytest.mark.ddp
@pytest.mark.parametrize("name", list(DDP_CONFIGS))
def test_ddp_base_unused_parameters_are_all_reduced(ddp_result, name):
    """Skippable blocks (and the full-stage norm set) get gradients only from the super-net pass,
    which runs in no_sync(): they must still be all-reduced by the second backward."""
    rank0, rank1 = ddp_result[name]
    unused = base_unused_names(tiny_vit())
    assert any(".blocks.1." in k for k in unused) and any(".full." in k for k in unused)
    assert_params_close(rank0, rank1, atol=1e-7, names=unused)
    assert_params_close(rank0, rank1, atol=1e-7)
    init = params(tiny_vit())
    x, y = batch()
    local = [_single_process(DDP_CONFIGS[name], xs, ys) for xs, ys in zip(x.chunk(2), y.chunk(2))]
    for k in unused:  # they trained, and not on one rank's data only
        assert (rank0[k] - init[k]).abs().max() > 1e-4, k
    assert max((local[0][k] - local[1][k]).abs().max().item() for k in unused) > 1e-3
