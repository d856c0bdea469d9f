"""Tests of adaskip.data: digits subsets, loaders, manifests, ImageFolder and CIFAR from local folders."""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from adaskip.data import DataConfig, DataError, Subsets, load_subsets, make_loader, prepare
from adaskip.data.loader import default_workers, resolve_workers

N_DIGITS = 1797


@pytest.fixture(scope="module")
def digits() -> Subsets:
    return load_subsets(DataConfig())


def _rows(subsets: Subsets) -> dict[str, set[int]]:
    return {k: set(getattr(subsets, k).source_index.tolist()) for k in ("train", "val", "test")}


# --- config -------------------------------------------------------------------------------------------


def test_config_rejects_unknown_keys_and_is_frozen() -> None:
    with pytest.raises(ValidationError):
        DataConfig(name="digits", batch_size=3)
    cfg = DataConfig()
    with pytest.raises(ValidationError):
        cfg.seed = 1


def test_config_requires_path_except_for_digits() -> None:
    with pytest.raises(ValidationError, match="data.path"):
        DataConfig(name="cifar10")
    with pytest.raises(ValidationError):
        DataConfig(image_size=4)
    with pytest.raises(ValidationError):
        DataConfig(val_fraction=0.5)
    assert DataConfig(name="imagefolder", path="/x").path == "/x"


# --- digits -------------------------------------------------------------------------------------------


def test_digits_subsets_disjoint_complete_and_stratified(digits: Subsets) -> None:
    rows = _rows(digits)
    assert sum(len(v) for v in rows.values()) == N_DIGITS
    assert set().union(*rows.values()) == set(range(N_DIGITS))
    assert not (rows["train"] & rows["val"] or rows["train"] & rows["test"] or rows["val"] & rows["test"])
    assert abs(len(digits.val) - 0.15 * N_DIGITS) <= 2 and abs(len(digits.test) - 0.15 * N_DIGITS) <= 2
    overall = Counter(digits.train.targets + digits.val.targets + digits.test.targets)
    for split in (digits.train, digits.val, digits.test):
        counts = Counter(split.targets)
        for c in range(10):
            assert abs(counts[c] / len(split) - overall[c] / N_DIGITS) < 0.02
    assert digits.num_classes == 10 and digits.in_chans == 3 and digits.class_names == [str(i) for i in range(10)]


def test_digits_deterministic_per_seed(digits: Subsets) -> None:
    again = load_subsets(DataConfig())
    assert _rows(again) == _rows(digits)
    assert torch.equal(again.val[5][0], digits.val[5][0])
    other = load_subsets(DataConfig(seed=1))
    assert _rows(other)["test"] != _rows(digits)["test"]


def test_digits_shapes_labels_and_augmentation() -> None:
    subsets = load_subsets(DataConfig(image_size=16, seed=3))
    for ds in (subsets.train, subsets.val, subsets.test):
        x, y = ds[0]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert all(0 <= t < 10 for t in ds.targets) and isinstance(y, int)
    assert torch.equal(subsets.val[0][0], subsets.val[0][0])  # eval is deterministic
    torch.manual_seed(0)
    assert not torch.equal(subsets.train[0][0], subsets.train[0][0])  # train is augmented
    plain = load_subsets(DataConfig(image_size=16, seed=3, augment=False))
    assert torch.equal(plain.train[0][0], plain.train[0][0])


# --- loaders ------------------------------------------------------------------------------------------


def test_loader_batches_and_seeded_order(digits: Subsets) -> None:
    loader = make_loader(digits.val, batch_size=64, shuffle=True, seed=0)
    batches = list(loader)
    assert len(batches) == 5 and batches[0][0].shape == (64, 3, 32, 32) and batches[0][1].shape == (64,)
    assert sum(len(b[1]) for b in batches) == len(digits.val)
    labels = lambda seed: torch.cat([y for _, y in make_loader(digits.val, 64, True, seed)])  # noqa: E731
    assert torch.equal(labels(0), torch.cat([b[1] for b in batches]))
    assert not torch.equal(labels(0), labels(1))
    assert len(make_loader(digits.val, 64, False, 0, drop_last=True)) == len(digits.val) // 64


def test_distributed_sampler_shards_disjointly(digits: Subsets) -> None:
    loaders = [make_loader(digits.test, 16, shuffle=True, seed=7, distributed=(r, 2)) for r in range(2)]
    shards = [list(loader.sampler) for loader in loaders]
    assert len(shards[0]) == len(shards[1]) == len(digits.test) // 2
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(len(digits.test)))
    assert sum(len(y) for _, y in loaders[0]) == len(shards[0])
    loaders[0].sampler.set_epoch(1)
    assert list(loaders[0].sampler) != shards[0]
    with pytest.raises(ValueError):
        make_loader(digits.test, 16, True, 0, distributed=(2, 2))


# --- prepare ------------------------------------------------------------------------------------------


def test_prepare_writes_manifest_with_stable_fingerprint(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    info = prepare(DataConfig(), out)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == info
    assert info["name"] == "digits" and info["path"] is None and info["num_classes"] == 10
    assert info["in_chans"] == 3 and info["class_names"] == [str(i) for i in range(10)]
    assert sum(info["sizes"].values()) == N_DIGITS and info["image_size"] == 32 and info["seed"] == 0
    assert len(info["fingerprint"]) == 64
    assert prepare(DataConfig(), out)["fingerprint"] == info["fingerprint"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # no temp files left behind


def test_prepare_failure_leaves_no_manifest(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match="data.path"):
        prepare(DataConfig(name="imagefolder", path=str(tmp_path / "nowhere")), out)
    assert not (out / "manifest.json").exists()


# --- imagefolder --------------------------------------------------------------------------------------

CLASSES = ["cat", "dog", "owl"]


def _png(path: Path, seed: int, size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for ci, c in enumerate(CLASSES):
        for i in range(5):
            _png(root / "train" / c / f"{i}.png", seed=10 * ci + i)
        for i in range(2):
            _png(root / "val" / c / f"{i}.png", seed=100 + 10 * ci + i, size=(9, 30))
    return root


def test_imagefolder_loads(folder: Path, tmp_path: Path) -> None:
    cfg = DataConfig(name="imagefolder", path=str(folder), image_size=16)
    subsets = load_subsets(cfg)
    assert subsets.class_names == CLASSES and subsets.num_classes == 3 and subsets.in_chans == 3
    assert len(subsets.train) + len(subsets.val) == 15 and len(subsets.val) >= 1 and len(subsets.test) == 6
    for ds in (subsets.train, subsets.val, subsets.test):
        x, y = ds[0]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 3
    xb, yb = next(iter(make_loader(subsets.test, 4, shuffle=False, seed=0)))
    assert xb.shape == (4, 3, 16, 16) and yb.tolist() == [0, 0, 1, 1]
    info = prepare(cfg, tmp_path / "out")
    assert info["path"] == str(folder.resolve()) and info["sizes"]["test"] == 6
    assert prepare(cfg, tmp_path / "out2")["fingerprint"] == info["fingerprint"]
    clone = pickle.loads(pickle.dumps(subsets.val))  # worker processes may be spawned
    assert torch.equal(clone[0][0], subsets.val[0][0])
    _png(folder / "train" / "dog" / "extra.png", seed=999)
    assert prepare(cfg, tmp_path / "out3")["fingerprint"] != info["fingerprint"]


def test_imagefolder_timm_transform_for_large_inputs(folder: Path) -> None:
    subsets = load_subsets(DataConfig(name="imagefolder", path=str(folder), image_size=96))
    assert subsets.train[0][0].shape == (3, 96, 96) and subsets.test[0][0].shape == (3, 96, 96)


def test_imagefolder_corrupt_png_names_the_file(folder: Path, tmp_path: Path) -> None:
    bad = folder / "train" / "dog" / "0-bad.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    cfg = DataConfig(name="imagefolder", path=str(folder), image_size=16)
    subsets = load_subsets(cfg)
    base = subsets.train.base
    index = [p for p, _ in base.samples].index(str(bad))
    with pytest.raises(DataError, match="0-bad.png"):
        base[index]
    with pytest.raises(DataError, match="0-bad.png"):
        prepare(cfg, tmp_path / "out")  # the first image of each class is decoded
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_imagefolder_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path"):
        load_subsets(DataConfig(name="imagefolder", path=str(tmp_path / "missing")))


def test_imagefolder_empty_class_folder(folder: Path) -> None:
    (folder / "train" / "emu").mkdir()
    with pytest.raises(DataError, match="emu"):
        load_subsets(DataConfig(name="imagefolder", path=str(folder)))


def test_imagefolder_empty_or_incomplete_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match="train/"):
        load_subsets(DataConfig(name="imagefolder", path=str(root)))
    (root / "train").mkdir()
    (root / "val").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_subsets(DataConfig(name="imagefolder", path=str(root)))


def test_imagefolder_val_class_unknown_to_train(folder: Path) -> None:
    _png(folder / "val" / "yak" / "0.png", seed=5)
    with pytest.raises(DataError, match="yak"):
        load_subsets(DataConfig(name="imagefolder", path=str(folder)))


# --- loader worker processes (data.workers) -----------------------------------------------------------


def test_default_workers_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_workers("digits", cpus=64) == 0  # in-memory tensors: no workers
    assert [default_workers("imagefolder", cpus=c) for c in (1, 2, 3, 5, 64)] == [0, 1, 2, 4, 4]
    assert [default_workers("cifar10", ranks=r, cpus=8) for r in (1, 2, 4, 8)] == [4, 3, 1, 0]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert resolve_workers(DataConfig(name="imagefolder", path="/x")) == 2  # this process's CPUs, minus one
    assert resolve_workers(DataConfig(name="imagefolder", path="/x"), ranks=3) == 0
    assert resolve_workers(DataConfig(workers=3)) == 3  # explicit wins, even for digits, per rank
    assert resolve_workers(DataConfig(name="imagefolder", path="/x", workers=0), ranks=1) == 0
    assert DataConfig().workers is None


def test_negative_workers_is_a_config_error_naming_the_key() -> None:
    from adaskip.config import ConfigError, parse_params

    with pytest.raises(ValidationError, match="workers"):
        DataConfig(workers=-1)
    with pytest.raises(ConfigError, match=r"data\.workers: .*greater than or equal to 0.*got -1"):
        parse_params({"data": {"workers": -1}})
    with pytest.raises(ValueError, match="num_workers"):
        make_loader(torch.arange(4), 2, False, 0, num_workers=-1)


def _epochs(ds, workers: int, seed: int = 0, shuffle: bool = True, epochs: int = 2, **kw) -> list:
    loader = make_loader(ds, 4, shuffle=shuffle, seed=seed, num_workers=workers, **kw)
    out = []
    for epoch in range(epochs):
        if kw.get("distributed"):
            loader.sampler.set_epoch(epoch)
        out += list(loader)
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(s, t) for (x, s), (y, t) in zip(a, b))


def test_imagefolder_workers_same_batches_as_main_process(folder: Path) -> None:
    subsets = load_subsets(DataConfig(name="imagefolder", path=str(folder), image_size=16))
    main, two = _epochs(subsets.train, 0), _epochs(subsets.train, 2)
    assert [y.tolist() for _, y in two] == [y.tolist() for _, y in main]  # same order and labels, both epochs
    assert [x.shape for x, _ in two] == [x.shape for x, _ in main]
    assert two[0][0].shape == (4, 3, 16, 16) and two[0][0].dtype == torch.float32
    assert _same(_epochs(subsets.train, 2), two)  # augmentation in workers is seeded: same seed, same tensors
    assert not _same(_epochs(subsets.train, 2, shuffle=False, seed=1), _epochs(subsets.train, 2, shuffle=False))
    assert _same(_epochs(subsets.test, 2, shuffle=False), _epochs(subsets.test, 0, shuffle=False))  # eval: identical
    for rank in range(2):  # sharded: each rank's order follows the sampler, its workers' draws are repeatable
        shard = _epochs(subsets.train, 2, distributed=(rank, 2))
        main_shard = _epochs(subsets.train, 0, distributed=(rank, 2))
        assert [y.tolist() for _, y in shard] == [y.tolist() for _, y in main_shard]
        assert _same(_epochs(subsets.train, 2, distributed=(rank, 2)), shard)


class _OnlyInWorker:
    """The dataset's transform, refusing to run outside a DataLoader worker process."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image):
        if torch.utils.data.get_worker_info() is None:
            raise RuntimeError("transform ran in the main process")
        return self.transform(image)


def test_workers_decode_and_augment(folder: Path) -> None:
    subsets = load_subsets(DataConfig(name="imagefolder", path=str(folder), image_size=16))
    subsets.train.transform = _OnlyInWorker(subsets.train.transform)
    loader = make_loader(subsets.train, 4, shuffle=True, seed=0, num_workers=2)
    assert loader.num_workers == 2 and loader.persistent_workers and loader.prefetch_factor >= 1
    assert sum(len(y) for _, y in loader) == len(subsets.train)
    with pytest.raises(RuntimeError, match="main process"):
        next(iter(make_loader(subsets.train, 4, shuffle=True, seed=0, num_workers=0)))
    assert not loader.pin_memory and not make_loader(subsets.train, 4, True, 0, device="cpu").pin_memory
    assert make_loader(subsets.train, 4, True, 0, num_workers=2, device="cuda").pin_memory  # pinned only for CUDA


# --- cifar --------------------------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_batch(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    entry = {
        "batch_label": path.name,
        "labels": [int(i % 10) for i in range(seed, seed + n)],
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"{i}.png" for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        _cifar_batch(folder / f"data_batch_{b}", n=6, seed=b)
    _cifar_batch(folder / "test_batch", n=5, seed=0)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": 6, "num_vis": 3072}, f, protocol=2)
    return folder.parent


def test_cifar10_from_local_pickles(cifar_root: Path, tmp_path: Path) -> None:
    cfg = DataConfig(name="cifar10", path=str(cifar_root))
    subsets = load_subsets(cfg)
    assert subsets.class_names == CIFAR_NAMES and subsets.num_classes == 10 and subsets.in_chans == 3
    assert len(subsets.train) + len(subsets.val) == 30 and len(subsets.val) >= 1 and len(subsets.test) == 5
    x, y = subsets.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    assert subsets.test.targets == [0, 1, 2, 3, 4]
    assert torch.equal(pickle.loads(pickle.dumps(subsets.test))[2][0], subsets.test[2][0])
    info = prepare(cfg, tmp_path / "out")
    assert info["sizes"] == {"train": len(subsets.train), "val": len(subsets.val), "test": 5}
    assert prepare(cfg, tmp_path / "out")["fingerprint"] == info["fingerprint"]
    # data.path may also name the batches folder itself
    assert len(load_subsets(DataConfig(name="cifar10", path=str(cifar_root / "cifar-10-batches-py"))).test) == 5


def test_cifar_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_subsets(DataConfig(name="cifar10", path=str(tmp_path)))
    with pytest.raises(DataError, match="data.path"):
        load_subsets(DataConfig(name="cifar10", path=str(tmp_path / "absent")))
    with pytest.raises(DataError, match="cifar-100-python"):
        load_subsets(DataConfig(name="cifar100", path=str(tmp_path)))


def test_cifar_corrupt_batch(cifar_root: Path) -> None:
    (cifar_root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cifar10"):
        load_subsets(DataConfig(name="cifar10", path=str(cifar_root)))
