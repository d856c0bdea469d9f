"""Tests of adaskip.models: split rule, skip parsing, faithfulness to timm, skipping, skip-aware norms,
weight loading, MACs and parameter counts.

Speed notes (the suite must stay fast on 2 CPU cores):
* numerical tests use small variants (32-64 px, tiny Swin) built once per module and shared;
* structure-only tests and the 224 px MAC figures run on the ``meta`` device: no weight init, no real
  arithmetic. ``test_macs_meta_equals_cpu`` checks that ``count_macs`` gives the same count on meta
  and on CPU for every family, and ``test_vit_macs_count_attention_on_cpu`` checks the CPU attention
  kernel is counted, so the meta shortcut does not hide a CPU-only counting problem.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter

import pytest
import timm
import torch
from torch import nn

import adaskip
from adaskip import AdaptiveDepthNet, SkipConfig, count_macs, count_params, create_model, load_timm_weights
from adaskip.models import SkipAwareNorm, default_split
from adaskip.models.adaptive import timm_key

NUM_CLASSES = 10
# name -> (timm kwargs, input resolution) of the small variants used for numerical tests
SMALL = {
    "resnet18": ({}, 32),
    "resnet50": ({}, 32),
    "mobilenetv2_100": ({}, 32),
    "deit_tiny_patch16_224": (dict(img_size=32, patch_size=8), 32),
    "swin_tiny_patch4_window7_224": (dict(img_size=64, window_size=4, embed_dim=24, num_heads=(1, 1, 2, 2)), 64),
}
FAMILY_REPS = ["resnet18", "mobilenetv2_100", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]
NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


# --------------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------------
def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Random affine parameters and running statistics for every norm (timm zero-inits some gammas,
    which would make skipped blocks no-ops and hide skipping bugs)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda t, lo, hi: torch.rand(t.shape, generator=gen) * (hi - lo) + lo  # noqa: E731
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, NORMS):
                continue
            if getattr(m, "weight", None) is not None:
                m.weight.copy_(rand(m.weight, 0.5, 1.5))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(rand(m.bias, -0.3, 0.3))
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.copy_(rand(m.running_mean, -0.2, 0.2))
                m.running_var.copy_(rand(m.running_var, 0.5, 1.5))


def _inputs(name: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    size = SMALL[name][1]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _mixed(num_stages: int) -> str:
    """A skip string that skips some stages and keeps others: TFTF, TFTFT."""
    return ("TF" * num_stages)[:num_stages]


@pytest.fixture(scope="module")
def plain_model():
    """``plain_model(name)``: the plain timm model (small variant) with randomised norms, eval mode;
    built once per name. Tests must not modify it."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **SMALL[name][0])
            _randomise_norms(model)
            cache[name] = model.eval()
        return cache[name]

    return get


def _adaptive(name: str, plain: nn.Module, **kwargs) -> AdaptiveDepthNet:
    model = create_model(name, num_classes=NUM_CLASSES, **SMALL[name][0], **kwargs)
    load_timm_weights(model, plain.state_dict())
    return model.eval()


def _meta_model(name: str, **kwargs) -> AdaptiveDepthNet:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.fixture(scope="module")
def model_224():
    """``model_224(name)``: 1000-class adaptive model at its default resolution on the meta device (once per name)."""
    cache: dict[str, AdaptiveDepthNet] = {}

    def get(name: str) -> AdaptiveDepthNet:
        if name not in cache:
            cache[name] = _meta_model(name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def macs_224(model_224):
    """``macs_224(name)``: {skip string: MACs at 224 px} for every configuration (once per model)."""
    cache: dict[str, dict[str, int]] = {}

    def get(name: str) -> dict[str, int]:
        if name not in cache:
            model = model_224(name)
            cache[name] = {str(c): count_macs(model, c, (3, 224, 224)) for c in model.configs()}
        return cache[name]

    return get


# --------------------------------------------------------------------------------------------------
# 1. split rule and model factory
# --------------------------------------------------------------------------------------------------
def test_default_split_formula():
    # mandatory = min(n - 1, (n + 1) // 2)
    assert default_split([2, 3, 4, 6, 23]) == [1, 2, 2, 3, 12]
    assert default_split([3, 4, 6, 3]) == [2, 2, 3, 2]


@pytest.mark.parametrize(
    "name, mandatory, skippable",
    [
        ("resnet50", [2, 2, 3, 2], [1, 2, 3, 1]),
        ("mobilenetv2_100", [1, 2, 2, 2, 2], [1, 1, 2, 1, 1]),
        ("vit_base_patch16_224", [2, 2, 2, 2], [1, 1, 1, 1]),
        ("swin_tiny_patch4_window7_224", [1, 1, 3, 1], [1, 1, 3, 1]),
    ],
)
def test_default_split_per_family(model_224, name, mandatory, skippable):
    model = model_224(name)
    assert model.num_stages == len(mandatory)
    assert model.blocks_per_stage == list(zip(mandatory, skippable))
    assert model.split == mandatory
    for i in range(model.num_stages):
        assert len(model.mandatory_blocks(i)) == mandatory[i]
        assert len(model.skippable_blocks(i)) == skippable[i]


def test_vit_base_split_small_image():
    model = _meta_model("vit_base_patch16_224", img_size=32)
    assert model.blocks_per_stage == [(2, 1)] * 4


def test_stage_blocks_are_timm_blocks_in_order(model_224):
    # ResNet: stage i = layer{i+1}, mandatory first
    resnet = model_224("resnet50")
    for i in range(4):
        layer = list(getattr(resnet.backbone, f"layer{i + 1}"))
        got = resnet.mandatory_blocks(i) + resnet.skippable_blocks(i)
        assert len(got) == len(layer) and all(a is b for a, b in zip(got, layer))
    # ViT: 12 blocks in 4 groups of 3 consecutive blocks, last one of each group skippable
    vit = model_224("vit_base_patch16_224")
    blocks = list(vit.backbone.blocks)
    for i in range(4):
        assert [b for b in vit.mandatory_blocks(i)] == blocks[3 * i : 3 * i + 2]
        assert vit.skippable_blocks(i)[0] is blocks[3 * i + 2]
    # Swin: stage i = layers[i].blocks
    swin = model_224("swin_tiny_patch4_window7_224")
    for i in range(4):
        stage = list(swin.backbone.layers[i].blocks)
        got = swin.mandatory_blocks(i) + swin.skippable_blocks(i)
        assert all(a is b for a, b in zip(got, stage)) and len(got) == len(stage)
    # MobileNetV2: the block groups with >= 2 blocks, in order
    mbv2 = model_224("mobilenetv2_100")
    groups = [list(g) for g in mbv2.backbone.blocks if len(g) >= 2]
    assert len(groups) == 5
    for i, group in enumerate(groups):
        got = mbv2.mandatory_blocks(i) + mbv2.skippable_blocks(i)
        assert all(a is b for a, b in zip(got, group)) and len(got) == len(group)


def test_custom_split_honoured():
    model = _meta_model("resnet50", split=[1, 3, 5, 2])
    assert model.split == [1, 3, 5, 2]
    assert model.blocks_per_stage == [(1, 2), (3, 1), (5, 1), (2, 1)]
    # skip-aware norms only in mandatory blocks: 3 BNs per bottleneck, downsample BN excluded
    assert [len(model.skip_aware_norms(i)) for i in range(4)] == [3, 9, 15, 6]
    for i in range(4):
        for block in model.skippable_blocks(i):
            assert not any(isinstance(m, SkipAwareNorm) for m in block.modules())
        for block in model.mandatory_blocks(i):
            assert all(isinstance(getattr(block, f"bn{k}"), SkipAwareNorm) for k in (1, 2, 3))
            if block.downsample is not None:
                assert not any(isinstance(m, SkipAwareNorm) for m in block.downsample.modules())
    vit = _meta_model("deit_tiny_patch16_224", split=[1, 2, 1, 2])
    assert vit.blocks_per_stage == [(1, 2), (2, 1), (1, 2), (2, 1)]


@pytest.mark.parametrize(
    "name, kwargs, split",
    [("resnet18", {"channels": [8, 8, 16, 16]}, None), ("deit_tiny_patch16_224", {"img_size": 32}, [1, 2, 1, 2])],
)
def test_model_carries_its_spec(name, kwargs, split):
    """create_model records what rebuilds the model (the split as resolved), the "spec" a model file saves."""
    from adaskip.training import build_from_spec

    net = create_model(name, num_classes=3, split=split, num_stages=4, **kwargs)
    assert net.spec == {
        "name": name,
        "num_classes": 3,
        "split": net.split,
        "skip_aware_norm": True,
        "num_stages": 4,
        "kwargs": kwargs,
    }
    again = build_from_spec(net.spec)
    assert again.spec == net.spec and again.blocks_per_stage == net.blocks_per_stage
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


@pytest.mark.parametrize(
    "split, pattern",
    [
        ([0, 2, 3, 2], r"stage 0 has 3 blocks.*\[1, 2\]"),  # no mandatory block
        ([2, 2, 3, 3], r"stage 3 has 3 blocks.*\[1, 2\]"),  # no skippable block
        ([2, 4, 3, 2], r"stage 1 has 4 blocks.*\[1, 3\]"),  # more than the stage has
        ([2, 2, -1, 2], r"stage 2 has 6 blocks.*\[1, 5\]"),
        ([2, 2, 3], r"3 entries.*4 stages"),  # wrong length
        ([2, 2, 3, 2, 1], r"5 entries.*4 stages"),
    ],
)
def test_impossible_split_raises(split, pattern):
    with pytest.raises(ValueError, match=pattern):
        _meta_model("resnet50", split=split)


def test_impossible_split_two_block_stages():
    # resnet18 has 2 blocks per stage: the only valid split is [1, 1, 1, 1]
    assert _meta_model("resnet18").blocks_per_stage == [(1, 1)] * 4
    with pytest.raises(ValueError, match=r"\[1, 1\]"):
        _meta_model("resnet18", split=[1, 2, 1, 1])


def test_vit_num_stages():
    assert _meta_model("deit_tiny_patch16_224", num_stages=6).blocks_per_stage == [(1, 1)] * 6
    assert _meta_model("deit_tiny_patch16_224", num_stages=2).blocks_per_stage == [(3, 3)] * 2
    for bad in (0, 7):
        with pytest.raises(ValueError, match="num_stages"):
            _meta_model("deit_tiny_patch16_224", num_stages=bad)


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny", "resnet_does_not_exist", "swin_nope"])
def test_unknown_model_raises_listing_families(name):
    with pytest.raises(ValueError) as info:
        create_model(name)
    msg = str(info.value)
    assert name in msg
    for family in ("resnet", "mobilenetv2", "vit", "swin"):
        assert family in msg


def test_wrong_class_in_family_pattern_raises():
    # resnetv2_50 matches "resnet*" but is a ResNetV2, which the resnet family cannot wrap
    with pytest.raises(ValueError, match="ResNetV2"):
        _meta_model("resnetv2_50")


def test_pretrained_raises():
    with pytest.raises(ValueError, match="pretrained"):
        create_model("resnet18", pretrained=True)
    assert isinstance(_meta_model("resnet18", pretrained=False), AdaptiveDepthNet)


def test_supported_models_cover_families():
    names = adaskip.supported_models()
    for name in ("resnet50", "mobilenetv2_100", "vit_base_patch16_224", "swin_tiny_patch4_window7_224"):
        assert name in names
    assert "efficientnet_b0" not in names


# --------------------------------------------------------------------------------------------------
# 2. skip parsing and configurations
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        "TTFF",
        "ttff",
        "TtFf",
        [True, True, False, False],
        (True, True, False, False),
        SkipConfig((True, True, False, False)),
    ],
)
def test_skip_parsing_accepts(value):
    cfg = SkipConfig.parse(value, 4)
    assert cfg == SkipConfig((True, True, False, False))
    assert str(cfg) == "TTFF" and cfg.num_skipped == 2 and len(cfg) == 4
    assert list(cfg) == [True, True, False, False]


def test_skip_none_is_super_net():
    assert SkipConfig.parse(None, 5) == SkipConfig.super_net(5)
    assert str(SkipConfig.super_net(3)) == "FFF" and str(SkipConfig.base_net(3)) == "TTT"


@pytest.mark.parametrize(
    "value, pattern",
    [
        ("TTF", r"3 flag.*4 stages"),
        ("TTFFF", r"5 flag.*4 stages"),
        ("", r"0 flag.*4 stages"),
        ([True, False], r"2 flag.*4 stages"),
        (SkipConfig((True, True, True)), r"3 flag.*4 stages"),
        ("TTFX", r"invalid character.*'X'"),
        ("TT F", r"invalid character"),
        ("1100", r"invalid character"),
        ([1, 1, 0, 0], r"bools"),
        (["T", "T", "F", "F"], r"bools"),
        (5, r"string like 'TTFF'"),
    ],
)
def test_skip_parsing_rejects(value, pattern):
    with pytest.raises(ValueError, match=pattern):
        SkipConfig.parse(value, 4)


def test_model_skip_parsing(plain_model):
    model = _adaptive("resnet18", plain_model("resnet18"))
    x = _inputs("resnet18")
    with torch.no_grad():
        ref = model(x, skip="TTFF")
        for value in ("ttff", [True, True, False, False], SkipConfig((True, True, False, False))):
            torch.testing.assert_close(model(x, skip=value), ref, rtol=0, atol=0)
        with pytest.raises(ValueError, match="4 stages"):
            model(x, skip="TTFFF")
        with pytest.raises(ValueError, match="invalid character"):
            model(x, skip="TTFQ")
    assert model.skip_config("tftf") == SkipConfig((True, False, True, False))


@pytest.mark.parametrize("name, stages", [("resnet50", 4), ("mobilenetv2_100", 5)])
def test_configs(model_224, name, stages):
    configs = model_224(name).configs()
    names = [str(c) for c in configs]
    assert len(configs) == 2**stages
    assert len(set(names)) == len(names) == len(set(configs))
    assert set(names) == {"".join(p) for p in itertools.product("FT", repeat=stages)}
    assert names[0] == "F" * stages and names[-1] == "T" * stages
    assert configs[0] == SkipConfig.super_net(stages) and configs[-1] == SkipConfig.base_net(stages)


# --------------------------------------------------------------------------------------------------
# 3. faithfulness to timm
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SMALL))
def test_super_net_equals_plain_timm(plain_model, name):
    plain = plain_model(name)
    model = _adaptive(name, plain)
    x = _inputs(name)
    s = model.num_stages
    with torch.no_grad():
        ref = plain(x)
        super_out = model(x, skip="F" * s)
        default_out = model(x)
        base_out = model(x, skip="T" * s)
    assert super_out.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(super_out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(default_out, ref, rtol=1e-5, atol=1e-5)
    # the base-net is a genuinely different network (norms randomised, so skipped blocks are no no-ops)
    assert (base_out - ref).abs().max() > 1e-2


def _truncated_plain(name: str, plain: nn.Module, model: AdaptiveDepthNet, skip: str) -> nn.Module:
    """An independent oracle: a copy of the plain timm model with the skipped stages' skippable
    blocks deleted."""
    p = copy.deepcopy(plain)
    # MobileNetV2: the adaptive stages are the block groups of depth >= 2, found before truncating
    mb_groups = [k for k, g in enumerate(p.blocks) if len(g) >= 2] if name.startswith("mobilenetv2") else []
    for i, flag in enumerate(skip):
        if flag != "T":
            continue
        m = model.blocks_per_stage[i][0]
        if name.startswith("resnet"):
            layer = getattr(p, f"layer{i + 1}")
            setattr(p, f"layer{i + 1}", nn.Sequential(*list(layer)[:m]))
        elif name.startswith("mobilenetv2"):
            g = mb_groups[i]
            p.blocks[g] = nn.Sequential(*list(p.blocks[g])[:m])
        elif name.startswith("swin"):
            p.layers[i].blocks = nn.Sequential(*list(p.layers[i].blocks)[:m])
        elif name.startswith("deit"):
            per = len(p.blocks) // model.num_stages
            p.blocks = nn.Sequential(
                *[nn.Identity() if i * per + m <= k < (i + 1) * per else b for k, b in enumerate(p.blocks)]
            )
        else:  # pragma: no cover
            raise AssertionError(name)
    return p


@pytest.mark.parametrize("name", list(SMALL))
def test_sub_networks_equal_truncated_timm(plain_model, name):
    plain = plain_model(name)
    model = _adaptive(name, plain)  # both norm sets equal timm's after loading
    x = _inputs(name)
    s = model.num_stages
    for skip in (_mixed(s), "F" + "T" * (s - 1), "T" * s):
        with torch.no_grad():
            got = model(x, skip=skip)
            want = _truncated_plain(name, plain, model, skip)(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name} {skip}: {m}")


@pytest.mark.parametrize("name", ["resnet18", "deit_tiny_patch16_224"])
def test_return_features(plain_model, name):
    model = _adaptive(name, plain_model(name))
    x = _inputs(name)
    with torch.no_grad():
        logits, feats = model(x, skip="TFTF", return_features=True)
        torch.testing.assert_close(logits, model(x, skip="TFTF"), rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(feats[-1]), logits, rtol=0, atol=0)
    assert len(feats) == model.num_stages
    if name == "resnet18":
        assert [f.shape[1] for f in feats] == [64, 128, 256, 512]


def test_deepcopy_is_independent(plain_model):
    # timm's EMA deep-copies the model: the copy's stage lists must point at the copy's modules
    model = _adaptive("resnet18", plain_model("resnet18"))
    clone = copy.deepcopy(model)
    assert clone.skippable_blocks(0)[0] is clone.backbone.layer1[1]
    assert clone.skip_aware_norms(0)[0] is clone.backbone.layer1[0].bn1
    x = _inputs("resnet18")
    with torch.no_grad():
        before = model(x, skip="TTTT")
        for norm in clone.skip_aware_norms(0):
            norm.skipped.weight.add_(0.5)
        torch.testing.assert_close(model(x, skip="TTTT"), before, rtol=0, atol=0)
        assert (clone(x, skip="TTTT") - before).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# 4. skipping really skips: forward hooks and gradients
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY_REPS)
def test_skipped_blocks_do_not_run(plain_model, name):
    model = _adaptive(name, plain_model(name))
    s = model.num_stages
    calls: Counter = Counter()
    handles = []
    for i in range(s):
        for kind, blocks in (("mandatory", model.mandatory_blocks(i)), ("skippable", model.skippable_blocks(i))):
            for j, block in enumerate(blocks):
                handles.append(block.register_forward_hook(lambda mod, inp, out, key=(i, kind, j): calls.update([key])))
    x = _inputs(name)
    try:
        for skip in ("T" * s, _mixed(s), "F" * s):
            calls.clear()
            with torch.no_grad():
                model(x, skip=skip)
            for i in range(s):
                for j in range(len(model.mandatory_blocks(i))):
                    assert calls[(i, "mandatory", j)] == 1, (skip, i, j)
                for j in range(len(model.skippable_blocks(i))):
                    assert calls[(i, "skippable", j)] == (0 if skip[i] == "T" else 1), (skip, i, j)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", FAMILY_REPS)
def test_gradients_follow_the_sub_network(plain_model, name):
    model = _adaptive(name, plain_model(name)).train()
    s = model.num_stages
    x = _inputs(name, n=4)
    y = torch.arange(4) % NUM_CLASSES
    for skip in ("T" * s, "F" * s, _mixed(s)):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x, skip=skip), y).backward()
        for i in range(s):
            skipped = skip[i] == "T"
            for block in model.skippable_blocks(i):
                for p in block.parameters():
                    assert (p.grad is None) == skipped, (skip, i)
            norms = model.skip_aware_norms(i)
            assert norms, f"{name} stage {i} has no skip-aware norm"
            for norm in norms:
                used, unused = (norm.skipped, norm.full) if skipped else (norm.full, norm.skipped)
                assert all(p.grad is not None for p in used.parameters()), (skip, i)
                assert all(p.grad is None for p in unused.parameters()), (skip, i)
            for block in model.mandatory_blocks(i):  # non-norm weights of mandatory blocks always train
                for pname, p in block.named_parameters():
                    if ".full." not in f".{pname}" and ".skipped." not in f".{pname}":
                        assert p.grad is not None, (skip, i, pname)
        head = model.backbone.get_classifier()
        assert all(p.grad is not None for p in head.parameters())


# --------------------------------------------------------------------------------------------------
# 5. BatchNorm running statistics and skip_aware_norm=False
# --------------------------------------------------------------------------------------------------
def _bn_state(model: AdaptiveDepthNet):
    sets = {}
    for i in range(model.num_stages):
        for k, norm in enumerate(model.skip_aware_norms(i)):
            for which in ("full", "skipped"):
                bn = getattr(norm, which)
                sets[(i, k, which)] = (bn.running_mean.clone(), int(bn.num_batches_tracked))
        for k, bn in enumerate(
            m for b in model.skippable_blocks(i) for m in b.modules() if isinstance(m, nn.BatchNorm2d)
        ):
            sets[(i, k, "skippable")] = (bn.running_mean.clone(), int(bn.num_batches_tracked))
    return sets


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100"])
def test_bn_running_stats_per_norm_set(plain_model, name):
    model = _adaptive(name, plain_model(name)).train()
    s = model.num_stages
    x = _inputs(name, n=4)
    for skip in ("F" * s, "T" * s, _mixed(s)):
        before = _bn_state(model)
        with torch.no_grad():
            model(x, skip=skip)
        after = _bn_state(model)
        for (i, k, which), (mean, count) in before.items():
            new_mean, new_count = after[(i, k, which)]
            if which == "skippable":
                should_change = skip[i] == "F"
            else:
                should_change = (which == "skipped") == (skip[i] == "T")
            assert (new_count == count + 1) == should_change, (skip, i, k, which)
            assert (not torch.equal(new_mean, mean)) == should_change, (skip, i, k, which)


def test_shared_bn_updates_in_every_pass(plain_model):
    model = _adaptive("resnet18", plain_model("resnet18")).train()
    shared = [model.backbone.bn1, model.backbone.layer2[0].downsample[1]]
    assert all(type(bn) is nn.BatchNorm2d for bn in shared)
    x = _inputs("resnet18", n=4)
    for skip in ("FFFF", "TTTT"):
        before = [bn.running_mean.clone() for bn in shared]
        with torch.no_grad():
            model(x, skip=skip)
        assert all(not torch.equal(b, bn.running_mean) for b, bn in zip(before, shared))


@pytest.mark.parametrize("name", list(SMALL))
def test_no_skip_aware_norm(name):
    with torch.device("meta"):
        plain = timm.create_model(name, num_classes=NUM_CLASSES, **SMALL[name][0])
    model = _meta_model(name, num_classes=NUM_CLASSES, skip_aware_norm=False, **SMALL[name][0])
    assert not any(isinstance(m, SkipAwareNorm) for m in model.modules())
    assert all(model.skip_aware_norms(i) == [] for i in range(model.num_stages))
    keys = list(model.state_dict())
    assert all(k.startswith("backbone.") for k in keys)
    assert [k.removeprefix("backbone.") for k in keys] == list(plain.state_dict())


def test_no_skip_aware_norm_sub_networks_share_norms(plain_model):
    plain = plain_model("resnet18")
    model = _adaptive("resnet18", plain, skip_aware_norm=False)
    x = _inputs("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(model(x, skip="FFFF"), plain(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            model(x, skip="TFTF"), _truncated_plain("resnet18", plain, model, "TFTF")(x), rtol=1e-5, atol=1e-5
        )


# --------------------------------------------------------------------------------------------------
# 6. LayerNorm skip-aware sets for transformers
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_layernorm_skip_aware_sets(plain_model, name):
    model = _adaptive(name, plain_model(name))
    s = model.num_stages
    for i in range(s):
        norms = model.skip_aware_norms(i)
        assert len(norms) == 2 * len(model.mandatory_blocks(i))
        for block in model.mandatory_blocks(i):
            for attr in ("norm1", "norm2"):
                norm = getattr(block, attr)
                assert isinstance(norm, SkipAwareNorm) and norm in norms
                assert isinstance(norm.full, nn.LayerNorm) and type(norm.skipped) is type(norm.full)
                assert norm.full is not norm.skipped
        for block in model.skippable_blocks(i):
            assert not isinstance(block.norm1, SkipAwareNorm) and isinstance(block.norm1, nn.LayerNorm)
            assert not isinstance(block.norm2, SkipAwareNorm) and isinstance(block.norm2, nn.LayerNorm)
    # shared norms stay single
    assert isinstance(model.backbone.norm, nn.LayerNorm)
    if name.startswith("swin"):
        assert isinstance(model.backbone.layers[1].downsample.norm, nn.LayerNorm)

    x = _inputs(name)
    configs = ["F" * s, "T" * s, "T" + "F" * (s - 1), "F" + "T" * (s - 1)]
    with torch.no_grad():
        before = {c: model(x, skip=c) for c in configs}
        for norm in model.skip_aware_norms(0):  # only stage 0's skipped set
            norm.skipped.weight.mul_(1.5)
            norm.skipped.bias.add_(0.2)
        after = {c: model(x, skip=c) for c in configs}
    for c in configs:
        if c[0] == "T":  # stage 0 skipped: its skipped set runs
            assert (after[c] - before[c]).abs().max() > 1e-3, c
        else:
            torch.testing.assert_close(after[c], before[c], rtol=0, atol=0, msg=c)


# --------------------------------------------------------------------------------------------------
# 7. load_timm_weights and timm_key
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100", "swin_tiny_patch4_window7_224"])
def test_load_timm_weights_fills_both_norm_sets(plain_model, name):
    plain = plain_model(name)
    ref = plain.state_dict()
    model = _adaptive(name, plain)
    n_wrapped = 0
    for prefix, module in model.backbone.named_modules():
        if not isinstance(module, SkipAwareNorm):
            continue
        n_wrapped += 1
        for which in (module.full, module.skipped):
            for key, value in which.state_dict().items():
                assert torch.equal(value, ref[f"{prefix}.{key}"]), (prefix, key)
    assert n_wrapped == sum(len(model.skip_aware_norms(i)) for i in range(model.num_stages)) > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref[timm_key(model, key)]), key


def test_load_timm_weights_errors(plain_model):
    plain = plain_model("resnet18")
    model = create_model("resnet18", num_classes=NUM_CLASSES)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    good = plain.state_dict()

    missing = dict(good)
    del missing["layer1.0.bn1.weight"]
    with pytest.raises(ValueError, match=r"missing.*layer1\.0\.bn1\.weight"):
        load_timm_weights(model, missing)

    extra = dict(good, **{"extra_head.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected.*extra_head\.weight"):
        load_timm_weights(model, extra)

    other_classes = timm.create_model("resnet18", num_classes=7).state_dict()
    with pytest.raises(ValueError, match=r"shape.*fc\.weight"):
        load_timm_weights(model, other_classes)

    # no partial load happened
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k


def test_timm_key_round_trip(plain_model):
    plain = plain_model("resnet18")
    model = _adaptive("resnet18", plain)
    keys = list(model.state_dict())
    mapped = Counter(timm_key(model, k) for k in keys)
    assert set(mapped) == set(plain.state_dict())
    wrapped = {
        f"{p}.{k}"
        for p, m in model.backbone.named_modules()
        if isinstance(m, SkipAwareNorm)
        for k in m.full.state_dict()
    }
    assert wrapped and {k for k, n in mapped.items() if n == 2} == wrapped
    assert all(n in (1, 2) for n in mapped.values())
    # resnet18: layer1.0 is mandatory (wrapped), layer1.1 skippable (not)
    assert timm_key(model, "backbone.layer1.0.bn1.full.weight") == "layer1.0.bn1.weight"
    assert timm_key(model, "backbone.layer1.0.bn1.skipped.running_var") == "layer1.0.bn1.running_var"
    assert timm_key(model, "backbone.layer1.1.bn1.weight") == "layer1.1.bn1.weight"
    assert timm_key(model, "backbone.layer2.0.downsample.1.weight") == "layer2.0.downsample.1.weight"
    assert timm_key(model, "backbone.fc.weight") == "fc.weight"
    # export the full set back to a plain timm model: same outputs as the super-net
    exported = {timm_key(model, k): v for k, v in model.state_dict().items() if ".skipped." not in k}
    fresh = timm.create_model("resnet18", num_classes=NUM_CLASSES).eval()
    fresh.load_state_dict(exported, strict=True)
    x = _inputs("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x, skip="FFFF"), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# 8. MACs
# --------------------------------------------------------------------------------------------------
PAPER_GMACS = {  # docs/method.md section 6
    "resnet50": {"FFFF": 4.11, "TFFF": 3.90, "TTFF": 3.46, "TTTF": 2.80, "TTTT": 2.58},
    "vit_base_patch16_224": {"FFFF": 17.58, "FFFT": 16.20, "TTFF": 14.67, "TTTT": 11.76},
    "swin_tiny_patch4_window7_224": {"FFFF": 4.49, "TFFF": 4.11, "TTFF": 3.75, "TTTT": 2.34},
}


@pytest.mark.parametrize("name", list(PAPER_GMACS))
def test_macs_match_paper(macs_224, name):
    macs = macs_224(name)
    for skip, gmacs in PAPER_GMACS[name].items():
        assert macs[skip] / 1e9 == pytest.approx(gmacs, rel=0.02), skip
    # the paper's configurations are ordered: fewer MACs as more stages are skipped
    ordered = sorted(PAPER_GMACS[name], key=lambda c: -PAPER_GMACS[name][c])
    assert all(macs[a] > macs[b] for a, b in zip(ordered, ordered[1:]))


def test_macs_mobilenetv2_ratio(macs_224):
    macs = macs_224("mobilenetv2_100")
    assert macs["FFFFF"] / 1e9 == pytest.approx(0.32, rel=0.07)  # timm's MobileNetV2 is ~0.30 G
    assert macs["TTTTT"] / macs["FFFFF"] == pytest.approx(0.22 / 0.32, rel=0.02)


@pytest.mark.parametrize(
    "name", ["resnet50", "mobilenetv2_100", "vit_base_patch16_224", "swin_tiny_patch4_window7_224"]
)
def test_macs_monotone_and_additive(macs_224, name):
    macs = macs_224(name)
    s = len(next(iter(macs)))
    full = macs["F" * s]
    saved = [full - macs["".join("T" if j == i else "F" for j in range(s))] for i in range(s)]
    assert all(d > 0 for d in saved)
    for skip, value in macs.items():
        # adding a T flag strictly reduces MACs
        for i, flag in enumerate(skip):
            if flag == "F":
                assert macs[skip[:i] + "T" + skip[i + 1 :]] < value, (skip, i)
        # skipping stage i always saves the same amount (its skippable blocks)
        assert value == full - sum(d for d, f in zip(saved, skip) if f == "T"), skip


@pytest.mark.parametrize("name", list(SMALL))
def test_macs_meta_equals_cpu(plain_model, name):
    model = _adaptive(name, plain_model(name))
    meta = _meta_model(name, num_classes=NUM_CLASSES, **SMALL[name][0])
    size = (3, SMALL[name][1], SMALL[name][1])
    for skip in ("F" * model.num_stages, "T" * model.num_stages):
        assert count_macs(model, skip, size) == count_macs(meta, skip, size) > 0, skip


def test_vit_macs_count_attention_on_cpu():
    # deit_tiny at 32 px, patch 8: N = 16 patches + cls token, D = 192, MLP ratio 4
    model = create_model("deit_tiny_patch16_224", num_classes=NUM_CLASSES, img_size=32, patch_size=8)
    n, d = 17, 192

    def expected(blocks: int) -> int:
        patch = 16 * d * 3 * 8 * 8
        block = 12 * n * d * d + 2 * n * n * d  # qkv + proj + MLP, and q@k^T + attn@v
        return patch + blocks * block + d * NUM_CLASSES

    assert count_macs(model, "FFFF", (3, 32, 32)) == expected(12)
    assert count_macs(model, "TTTT", (3, 32, 32)) == expected(8)
    assert count_macs(model, "FFFT", (3, 32, 32)) == expected(11)


def test_count_macs_keeps_mode_and_statistics(plain_model):
    model = _adaptive("resnet18", plain_model("resnet18")).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, "TFTF", (3, 32, 32))
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------------------
# 9. parameter counts
# --------------------------------------------------------------------------------------------------
def _numel(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize(
    "name", ["resnet50", "mobilenetv2_100", "vit_base_patch16_224", "swin_tiny_patch4_window7_224"]
)
def test_count_params(model_224, name):
    with torch.device("meta"):
        plain_count = sum(p.numel() for p in timm.create_model(name).parameters())
    plain_model_ = _meta_model(name, skip_aware_norm=False)
    aware = model_224(name)
    s = aware.num_stages
    for model in (plain_model_, aware):
        assert count_params(model) == count_params(model, "F" * s) == plain_count
        skippable = [_numel(model.skippable_blocks(i)) for i in range(s)]
        assert all(n > 0 for n in skippable)
        assert count_params(model, "T" * s) == plain_count - sum(skippable)
        mixed = _mixed(s)
        assert count_params(model, mixed) == plain_count - sum(n for n, f in zip(skippable, mixed) if f == "T")
    assert sum(p.numel() for p in plain_model_.parameters()) == plain_count
    # the skip-aware model stores one extra norm set, which no single sub-network uses
    extra = sum(_numel([n.skipped for n in aware.skip_aware_norms(i)]) for i in range(s))
    assert extra > 0 and sum(p.numel() for p in aware.parameters()) == plain_count + extra


@pytest.mark.parametrize(
    "depths, expect",
    [
        ([3, 4, 6, 3], [[2, 2, 3, 2], [1, 1, 2, 1], [2, 3, 4, 2]]),
        ([2, 2, 2, 2], [[1, 1, 1, 1]]),  # one block each side only
        ([3, 3, 3, 3], [[2, 2, 2, 2], [1, 1, 1, 1]]),  # the rule already leaves one skippable block
    ],
)
def test_candidate_splits_follow_stage_depths(depths, expect):
    from adaskip.models import candidate_splits

    assert candidate_splits(depths) == expect
