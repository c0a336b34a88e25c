"""Tests for mixq.data: zip image decoding, labels, sampling, caching, normalisation, errors."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mixq.data as D
from mixq.data import datasets as ds
from mixq.data import zipimages
from mixq.errors import MixqError
from mixq.paths import resolve_data_root


@pytest.fixture(scope="module")
def root() -> Path:
    path = resolve_data_root()
    if path is None or not (path / "cifar10-jpeg" / "test.zip").is_file():
        pytest.skip("shared CIFAR-10 data not found")
    return path


@pytest.fixture(scope="module")
def cifar_test(root: Path) -> D.ImageSet:
    return D.test_set("cifar10", data_root=root)  # the full 10,000-image split, decoded once


@pytest.fixture()
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Clear the cache and count calls of the single-image decoder."""
    zipimages.clear_cache()
    calls = [0]
    real = zipimages._decode_one

    def counting(data: bytes, crop: int | None) -> np.ndarray:
        calls[0] += 1
        return real(data, crop)

    monkeypatch.setattr(zipimages, "_decode_one", counting)
    return calls


def _jpeg_bytes(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _decode_member(zip_path: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(zip_path) as zf:
        return np.asarray(Image.open(io.BytesIO(zf.read(name))).convert("RGB"))  # (H, W, 3)


# --- CIFAR-10 from the shared data -------------------------------------------------------------------


def test_cifar_test_split_shapes_labels_order(root: Path, cifar_test: D.ImageSet) -> None:
    s = cifar_test
    assert len(s) == 10_000 and s.name == "cifar10" and s.split == "test"
    assert s.images.shape == (10_000, 3, 32, 32) and s.images.dtype == torch.uint8
    assert s.labels.shape == (10_000,) and s.labels.dtype == torch.int64
    assert torch.equal(s.indices, torch.arange(10_000))
    assert torch.bincount(s.labels).tolist() == [1000] * 10
    members = D.list_members(root / "cifar10-jpeg" / "test.zip", prefix="test/")
    assert members == sorted(members) and len(members) == 10_000
    pos = members.index("test/cat/0002.jpg")
    assert s.labels[pos].item() == 3 == D.CIFAR10_CLASSES.index("cat")
    expected = _decode_member(root / "cifar10-jpeg" / "test.zip", "test/cat/0002.jpg")
    assert np.array_equal(s.images[pos].permute(1, 2, 0).numpy(), expected)
    assert list(D.CIFAR10_CLASSES) == sorted(D.CIFAR10_CLASSES)


def test_load_split_decodes_only_requested_members(root: Path, count_decodes: list[int]) -> None:
    s = D.load_split("cifar10", "train", data_root=root, indices=[0, 5000, 49_999])
    assert count_decodes[0] == 3
    assert s.labels.tolist() == [0, 1, 9] and s.indices.tolist() == [0, 5000, 49_999]
    assert s.images.shape == (3, 3, 32, 32)
    calib = D.calibration_set("cifar10", n=50, seed=7, data_root=root)
    assert count_decodes[0] == 3 + 50
    assert len(calib) == 50 and calib.split == "train"


def test_cache_hit_on_second_load(root: Path, count_decodes: list[int]) -> None:
    a = D.load_split("cifar10", "test", data_root=root, indices=[3, 1, 2])
    assert count_decodes[0] == 3 and D.cache_info().misses == 1
    a.images.zero_()  # callers get a copy: the cache must stay intact
    b = D.load_split("cifar10", "test", data_root=root, indices=[3, 1, 2])
    info = D.cache_info()
    assert count_decodes[0] == 3 and info.hits == 1 and info.misses == 1 and info.decoded == 3
    assert b.images.float().mean() > 0


def test_calibration_is_seeded(root: Path) -> None:
    a = D.calibration_set("cifar10", n=50, seed=0, data_root=root)
    b = D.calibration_set("cifar10", n=50, seed=0, data_root=root)
    c = D.calibration_set("cifar10", n=50, seed=1, data_root=root)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    assert not torch.equal(a.indices, c.indices)
    assert len(set(a.indices.tolist())) == 50
    expected = np.random.default_rng(0).choice(50_000, size=50, replace=False)
    assert a.indices.tolist() == expected.tolist()
    direct = D.load_split("cifar10", "train", data_root=root, indices=a.indices)
    assert torch.equal(direct.images, a.images) and torch.equal(direct.labels, a.labels)


def test_calibration_n_out_of_range(root: Path) -> None:
    with pytest.raises(MixqError, match="45000 .*5000 validation images"):
        D.calibration_set("cifar10", n=45_001, data_root=root)
    with pytest.raises(MixqError, match="calibration size"):
        D.calibration_set("cifar10", n=0, data_root=root)


# --- the CIFAR-10 validation split ---------------------------------------------------------------


def _reserved_draws(m: int = 50_000) -> np.ndarray:
    """Every position the reserved calibration draws pick, computed here from numpy directly."""
    hit = np.zeros(m, dtype=bool)
    for seed in ds.RESERVED_SEEDS:
        for n in ds.RESERVED_SIZES:
            hit[np.random.default_rng(seed).choice(m, size=n, replace=False)] = True
    return hit


def test_validation_split_is_balanced_fixed_and_avoids_reserved_draws(root: Path) -> None:
    val = D.validation_positions("cifar10", data_root=root)
    labels = D.load_split("cifar10", "train", data_root=root, indices=[0]).labels  # decode one: cheap
    assert labels.tolist() == [0]
    train_labels = np.repeat(np.arange(10), 5000)  # train/<class>/... sorted: 5,000 per class, class order
    assert val.size == 5000 and np.all(np.diff(val) > 0)
    assert np.bincount(train_labels[val], minlength=10).tolist() == [D.VAL_PER_CLASS] * 10
    reserved = _reserved_draws()
    assert not reserved[val].any()
    # "the first 500 free images of each class": every free image before a class's last val image is in val
    in_val = np.zeros(50_000, dtype=bool)
    in_val[val] = True
    for c in range(10):
        last = val[train_labels[val] == c].max()
        before = np.arange(c * 5000, last + 1)
        assert np.array_equal(in_val[before], ~reserved[before])
    assert np.array_equal(D.validation_positions("cifar10", data_root=root), val)  # fixed
    assert D.validation_positions("imagenet", data_root=root) is None


def test_reserved_calibration_draws_are_unchanged(root: Path) -> None:
    for seed, n in ((0, 50), (2, 64), (9, 400)):
        got = D.calibration_set("cifar10", n=n, seed=seed, data_root=root).indices.numpy()
        assert np.array_equal(got, np.random.default_rng(seed).choice(50_000, size=n, replace=False))


def test_other_calibration_draws_avoid_the_validation_split(root: Path) -> None:
    val = D.validation_positions("cifar10", data_root=root)
    redrawn = 0
    for seed in range(10, 16):
        plain = np.random.default_rng(seed).choice(50_000, size=50, replace=False)
        got = D.calibration_set("cifar10", n=50, seed=seed, data_root=root).indices.numpy()
        assert not np.isin(got, val).any() and len(set(got.tolist())) == 50
        if np.isin(plain, val).any():
            pool = np.setdiff1d(np.arange(50_000), val)
            assert np.array_equal(got, np.random.default_rng([seed, 1]).choice(pool, size=50, replace=False))
            redrawn += 1
        else:
            assert np.array_equal(got, plain)
    assert redrawn >= 1  # P(a 50-draw misses 5,000 of 50,000) = 0.5 %: the replacement path ran


def test_val_split_loads_the_validation_images(root: Path) -> None:
    val = D.validation_positions("cifar10", data_root=root)
    s = D.test_set("cifar10", data_root=root, split="val", limit=100)
    assert s.split == "val" and len(s) == 100 and torch.bincount(s.labels).tolist() == [10] * 10
    assert np.isin(s.indices.numpy(), val).all()
    direct = D.load_split("cifar10", "train", data_root=root, indices=s.indices)
    assert torch.equal(direct.images, s.images) and torch.equal(direct.labels, s.labels)
    assert len(D.test_set("cifar10", data_root=root, split="val")) == 5000
    with pytest.raises(MixqError, match="exclude"):
        D.test_set("cifar10", data_root=root, split="val", exclude=[1])
    with pytest.raises(MixqError, match="evaluation split 'holdout'"):
        D.test_set("cifar10", data_root=root, split="holdout")
    with pytest.raises(MixqError, match="evaluation split 'val' for dataset 'imagenet'"):
        D.test_set("imagenet", data_root=root, split="val")


def test_demo_has_no_validation_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds, "resolve_data_root", lambda arg=None: None)
    monkeypatch.setattr(ds, "_demo_warned", True)
    assert D.validation_positions("cifar10") is None
    with pytest.raises(MixqError, match="no validation split .*demo"):
        D.test_set("cifar10", split="val")
    got = D.calibration_set("cifar10", n=50, seed=3).indices.numpy()  # the demo draw is unchanged
    assert np.array_equal(got, np.random.default_rng(3).choice(200, size=50, replace=False))


def test_test_set_limit_is_stratified(root: Path, cifar_test: D.ImageSet) -> None:
    s = D.test_set("cifar10", data_root=root, limit=500)
    assert len(s) == 500 and torch.bincount(s.labels).tolist() == [50] * 10
    expected = [c * 1000 + i for c in range(10) for i in range(50)]  # first 50 of each class
    assert s.indices.tolist() == expected
    assert torch.equal(s.images, cifar_test.images[expected])
    small = D.test_set("cifar10", data_root=root, limit=25)
    counts = torch.bincount(small.labels, minlength=10)
    assert len(small) == 25 and counts.min() == 2 and counts.max() == 3
    with pytest.raises(MixqError, match="limit"):
        D.test_set("cifar10", data_root=root, limit=0)


def test_exclude_must_match_split(root: Path) -> None:
    calib = D.calibration_set("cifar10", n=5, seed=0, data_root=root)  # train split
    with pytest.raises(MixqError, match="exclude"):
        D.test_set("cifar10", data_root=root, exclude=calib)


def test_bad_indices(root: Path) -> None:
    with pytest.raises(MixqError, match="indices"):
        D.load_split("cifar10", "test", data_root=root, indices=[10_000])
    with pytest.raises(MixqError, match="indices"):
        D.load_split("cifar10", "test", data_root=root, indices=[0.5])


# --- ImageNet sample --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_zip(root: Path) -> Path:
    path = root / "imagenet-sample" / "sample.zip"
    if not path.is_file():
        pytest.skip("shared ImageNet sample not found")
    return path


def test_imagenet_labels_and_center_crop(root: Path, imagenet_zip: Path) -> None:
    members = D.list_members(imagenet_zip, prefix="sample/")
    wnids = sorted({m.split("/")[1].split("_")[0] for m in members})
    s = D.load_split("imagenet", "sample", data_root=root, indices=[0, 417, 999])
    assert s.images.shape == (3, 3, 224, 224) and s.images.dtype == torch.uint8
    for k, pos in enumerate([0, 417, 999]):
        assert s.labels[k].item() == wnids.index(members[pos].split("/")[1].split("_")[0])
    full = _decode_member(imagenet_zip, members[417])  # (H, W, 3), short side 256
    h, w = full.shape[:2]
    top, left = (h - 224) // 2, (w - 224) // 2
    assert np.array_equal(s.images[1].permute(1, 2, 0).numpy(), full[top : top + 224, left : left + 224])


def test_imagenet_calibration_holdout(root: Path, imagenet_zip: Path, count_decodes: list[int]) -> None:
    calib = D.calibration_set("imagenet", n=5, seed=3, data_root=root)
    assert calib.split == "sample" and count_decodes[0] == 5
    rest = D.split_size("imagenet", "sample", data_root=root)
    assert rest == 1000
    held = D.test_set("imagenet", data_root=root, exclude=calib, limit=20)
    assert len(held) == 20 and not set(held.indices.tolist()) & set(calib.indices.tolist())
    assert len(set(held.labels.tolist())) == 20  # one image per class: evenly spread classes
    with pytest.raises(MixqError, match="1000"):
        D.calibration_set("imagenet", n=1001, data_root=root)


# --- embedded demo and fallback (no shared data needed) ---------------------------------------------


def test_demo_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds, "resolve_data_root", lambda arg=None: None)
    monkeypatch.setattr(ds, "_demo_warned", False)
    with pytest.warns(UserWarning, match="demo"):
        test = D.test_set("cifar10")
    assert len(test) == 500 and torch.bincount(test.labels).tolist() == [50] * 10
    assert test.images.shape == (500, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is one-time
        train = D.load_split("cifar10", "train")
        calib = D.calibration_set("cifar10", n=50, seed=0)
    assert len(train) == 200 and torch.bincount(train.labels).tolist() == [20] * 10
    assert len(calib) == 50 and calib.split == "train"
    with pytest.raises(MixqError, match="200"):
        D.calibration_set("cifar10", n=201)
    with pytest.raises(MixqError, match="imagenet"):
        D.load_split("imagenet", "sample")


def test_demo_matches_full_data(root: Path, cifar_test: D.ImageSet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds, "resolve_data_root", lambda arg=None: None)
    monkeypatch.setattr(ds, "_demo_warned", True)
    demo = D.test_set("cifar10")
    full = D.test_set("cifar10", data_root=root, limit=500)
    assert torch.equal(demo.images, full.images) and torch.equal(demo.labels, full.labels)


# --- normalisation and batching ---------------------------------------------------------------------


def test_normalize_matches_hand_computation() -> None:
    x = torch.tensor([0, 51, 255, 128], dtype=torch.uint8).view(1, 1, 2, 2).repeat(2, 3, 1, 1)  # (2, 3, 2, 2)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    y = D.normalize(x, mean, std)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 2, 2)
    for c in range(3):
        for v, out in zip([0, 51, 255, 128], y[1, c].flatten().tolist(), strict=True):
            assert out == pytest.approx((v / 255.0 - mean[c]) / std[c], abs=1e-6)
    with pytest.raises(MixqError):
        D.normalize(x.float(), mean, std)
    with pytest.raises(MixqError):
        D.normalize(x[:, :2], mean, std)
    with pytest.raises(MixqError):
        D.normalize(x, (0.5, 0.5), std)


def test_batches() -> None:
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    s = D.ImageSet(images=images, labels=torch.arange(10), name="toy", split="test")
    got = list(D.batches(s, D.IMAGENET_MEAN, D.IMAGENET_STD, batch_size=4))
    assert [len(y) for _, y in got] == [4, 4, 2]
    x = torch.cat([b for b, _ in got])
    assert torch.allclose(x, D.normalize(images, D.IMAGENET_MEAN, D.IMAGENET_STD))
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(10))
    with pytest.raises(MixqError, match="batch_size"):
        D.batches(s, D.IMAGENET_MEAN, D.IMAGENET_STD, batch_size=0)


# --- errors and synthetic archives ------------------------------------------------------------------


def _write_cifar_zip(path: Path, split: str, bad_member: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for label, cls in enumerate(D.CIFAR10_CLASSES):
            for i in range(2):
                name = f"{split}/{cls}/{i:04d}.jpg"
                data = b"not a jpeg" if name == bad_member else _jpeg_bytes((label * 25, i * 100, 7))
                zf.writestr(name, data)


def test_synthetic_archive_roundtrip(tmp_path: Path) -> None:
    _write_cifar_zip(tmp_path / "cifar10-jpeg" / "test.zip", "test")
    s = D.test_set("cifar10", data_root=tmp_path)
    assert len(s) == 20 and s.labels.tolist() == [c for c in range(10) for _ in range(2)]
    red = s.images[:, 0].float().mean(dim=(1, 2))  # (N,) ~ label * 25
    assert torch.allclose(red, s.labels.float() * 25, atol=4)
    # data_root may also point at the cifar10-jpeg folder itself
    assert torch.equal(D.test_set("cifar10", data_root=tmp_path / "cifar10-jpeg").images, s.images)


def test_error_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MixqError, match="not a folder"):
        D.load_split("cifar10", "test", data_root=tmp_path / "nope")
    with pytest.raises(MixqError, match="cifar10-jpeg"):
        D.load_split("cifar10", "test", data_root=tmp_path)


def test_error_missing_zip(tmp_path: Path) -> None:
    (tmp_path / "cifar10-jpeg").mkdir()
    with pytest.raises(MixqError, match="test.zip"):
        D.load_split("cifar10", "test", data_root=tmp_path)


def test_error_corrupt_zip(tmp_path: Path) -> None:
    path = tmp_path / "cifar10-jpeg" / "test.zip"
    path.parent.mkdir()
    path.write_bytes(b"garbage, not a zip file" * 100)
    with pytest.raises(MixqError, match="not a readable zip"):
        D.load_split("cifar10", "test", data_root=tmp_path)


def test_error_undecodable_member(tmp_path: Path) -> None:
    _write_cifar_zip(tmp_path / "cifar10-jpeg" / "test.zip", "test", bad_member="test/cat/0001.jpg")
    D.load_split("cifar10", "test", data_root=tmp_path, indices=[0])  # other members still fine
    with pytest.raises(MixqError, match="test/cat/0001.jpg"):
        D.load_split("cifar10", "test", data_root=tmp_path)


def test_error_unknown_split_and_dataset(tmp_path: Path) -> None:
    with pytest.raises(MixqError, match="unknown split 'val'"):
        D.load_split("cifar10", "val", data_root=tmp_path)
    with pytest.raises(MixqError, match="unknown dataset"):
        D.load_split("mnist", "test", data_root=tmp_path)
    with pytest.raises(MixqError, match="unknown split"):
        D.calibration_set("imagenet", split="train", data_root=tmp_path)


def test_compressed_archive_also_reads(tmp_path: Path) -> None:
    path = tmp_path / "cifar10-jpeg" / "train.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for label, cls in enumerate(D.CIFAR10_CLASSES):
            zf.writestr(f"train/{cls}/0000.jpg", _jpeg_bytes((label * 25, 0, 0)))
    s = D.calibration_set("cifar10", n=10, seed=0, data_root=tmp_path)
    assert sorted(s.labels.tolist()) == list(range(10)) and s.images.shape == (10, 3, 32, 32)
