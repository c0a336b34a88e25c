"""CIFAR-10 (JPEG) and the ImageNet 1000-image sample as uint8 tensors, plus normalisation and batching.

Data layout (see ``shared/data/*/README.md``)::

    <data_root>/cifar10-jpeg/train.zip     train/<class>/NNNN.jpg   50,000 images 32x32
    <data_root>/cifar10-jpeg/test.zip      test/<class>/NNNN.jpg    10,000 images 32x32
    <data_root>/imagenet-sample/sample.zip sample/<wnid>_<name>.JPEG 1,000 images, short side 256

Members of a split are ordered by name; ``indices`` arguments and :attr:`ImageSet.indices` are positions
in that sorted list. CIFAR-10 labels follow :data:`CIFAR10_CLASSES` (= alphabetical order); ImageNet
labels are the index of the wnid in the sorted list of wnids in the archive, and images are center
cropped to 224x224.

When no data folder is found, CIFAR-10 falls back to the embedded demo archive
``mixq/_demo/cifar10-demo.zip`` (200 train images, 20 per class, and the first 50 test images of each
class) with a one-time warning. There is no ImageNet fallback.

CIFAR-10 validation split (``"val"``): :data:`VAL_PER_CLASS` train images of each class, fixed and
never drawn for calibration, so that settings can be chosen without the test split. It is carved around
the calibration draws of the shipped results: the images that :data:`RESERVED_SEEDS` x
:data:`RESERVED_SIZES` draws (``default_rng(seed).choice(50000, n)``) pick are left out, and of the rest
the first :data:`VAL_PER_CLASS` of each class in member order form ``val``. Calibration then draws from
``train`` minus ``val`` (see :func:`calibration_set`), and every reserved draw is unchanged. The
embedded demo archive is too small for a validation split.

ImageNet calibration/test overlap: the ImageNet sample has no train split, so :func:`calibration_set`
draws from the same 1000 images that :func:`test_set` evaluates on. Pass the calibration set as
``test_set(..., exclude=calib)`` to evaluate on the held-out remainder; by default (``exclude=None``)
the full sample is used so accuracies stay comparable with the README's FP32 numbers, and the caller
should say so when reporting.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixq.data import zipimages
from mixq.errors import MixqError
from mixq.paths import DEMO_DIR, resolve_data_root

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DEMO_ZIP",
    "HALF_MEAN",
    "HALF_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "ImageSet",
    "RESERVED_SEEDS",
    "RESERVED_SIZES",
    "SPLITS",
    "VAL_PER_CLASS",
    "batches",
    "calibration_set",
    "load_split",
    "normalize",
    "split_size",
    "test_set",
    "validation_positions",
]

logger = logging.getLogger(__name__)

#: CIFAR-10 class folders in label order 0..9 (alphabetical).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# Per-channel normalisation constants (RGB, on [0, 1] pixels), see shared/models/*/README.md.
#: "ImageNet" statistics: used by the ``*-jpeg-*`` CIFAR-10 models and the third-party ResNet-20/32.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: "CIFAR" statistics: used by the third-party ShuffleNetV2 x0.5.
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
#: ``x * 2 - 1``: used by EfficientNet-Lite0 on the ImageNet sample.
HALF_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
HALF_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: Name -> (mean, std) of the constants above.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar": (CIFAR_MEAN, CIFAR_STD),
    "half": (HALF_MEAN, HALF_STD),
}

#: Embedded CIFAR-10 demo archive (both splits in one zip), used when no data folder exists.
DEMO_ZIP: Path = DEMO_DIR / "cifar10-demo.zip"


@dataclass(frozen=True)
class _Spec:
    folder: str  # sub-folder of the data root
    zips: dict[str, str]  # split -> archive file name
    crop: int | None  # center crop side, None = keep as is
    calib_split: str  # split that calibration samples come from
    test_split: str  # split that test_set() evaluates


_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec("cifar10-jpeg", {"train": "train.zip", "test": "test.zip"}, None, "train", "test"),
    "imagenet": _Spec("imagenet-sample", {"sample": "sample.zip"}, 224, "sample", "sample"),
}
#: Valid split names per data set.
SPLITS: dict[str, tuple[str, ...]] = {name: tuple(spec.zips) for name, spec in _SPECS.items()}

#: Images per class in the CIFAR-10 validation split (carved from train).
VAL_PER_CLASS = 500
#: Calibration seeds whose draws of :data:`RESERVED_SIZES` images the validation split avoids.
RESERVED_SEEDS: tuple[int, ...] = tuple(range(10))
#: Calibration sizes whose draws with :data:`RESERVED_SEEDS` the validation split avoids.
RESERVED_SIZES: tuple[int, ...] = (50, 64, 100, 128, 200, 256, 400, 500)
#: Name of the validation split (CIFAR-10 only; its images live in the train archive).
VAL_SPLIT = "val"

_demo_warned = False


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A decoded image split (or part of one).

    Attributes:
        images: uint8 ``(N, 3, H, W)``, RGB.
        labels: int64 ``(N,)``.
        name: data set name (``"cifar10"`` or ``"imagenet"``).
        split: split name (``"train"``, ``"test"``, ``"sample"``, or ``"val"`` for the CIFAR-10 validation
            split, whose ``indices`` are positions in the train split).
        indices: int64 ``(N,)`` positions of the images in the split's sorted member list (``None`` for
            sets built by hand); lets a test set exclude calibration images.
    """

    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    name: str
    split: str
    indices: torch.Tensor | None = None  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _spec(dataset: str) -> _Spec:
    if dataset not in _SPECS:
        raise MixqError(f"unknown dataset {dataset!r}; expected one of {sorted(_SPECS)}")
    return _SPECS[dataset]


def _check_split(dataset: str, split: str) -> _Spec:
    spec = _spec(dataset)
    if split not in spec.zips:
        raise MixqError(f"unknown split {split!r} for dataset {dataset!r}; expected one of {list(spec.zips)}")
    return spec


def _warn_demo() -> None:
    global _demo_warned
    if not _demo_warned:
        _demo_warned = True
        msg = (
            f"no data folder found (pass data_root or set $MIXQ_DATA); using the embedded CIFAR-10 demo "
            f"archive {DEMO_ZIP.name} (200 train / 500 test images): accuracies are not comparable with "
            f"the full test split"
        )
        logger.warning(msg)
        warnings.warn(msg, stacklevel=4)


def _archive(dataset: str, split: str, data_root: str | os.PathLike | None) -> Path:
    """Find the zip holding ``split``; falls back to the demo archive for CIFAR-10."""
    spec = _check_split(dataset, split)
    root = resolve_data_root(data_root)
    if root is None:
        if dataset != "cifar10":
            raise MixqError(
                f"no data folder found for dataset {dataset!r}: pass data_root (a folder holding "
                f"{spec.folder}/) or set $MIXQ_DATA; only CIFAR-10 has an embedded demo"
            )
        if not DEMO_ZIP.is_file():
            raise MixqError(
                f"no data folder found and the embedded demo archive {str(DEMO_ZIP)!r} is missing; "
                f"pass data_root (a folder holding {spec.folder}/)"
            )
        _warn_demo()
        return DEMO_ZIP
    folder = root / spec.folder
    if not folder.is_dir():
        if (root / spec.zips[split]).is_file() and root.name == spec.folder:
            folder = root  # data_root points at the data set folder itself
        else:
            raise MixqError(
                f"data root {str(root)!r} has no {spec.folder}/ folder (expected {spec.folder}/"
                f"{spec.zips[split]} inside it)"
            )
    path = folder / spec.zips[split]
    if not path.is_file():
        raise MixqError(f"missing archive {str(path)!r} for {dataset} split {split!r}")
    return path


def _members_and_labels(dataset: str, split: str, path: Path) -> tuple[list[str], np.ndarray]:
    """Sorted member names of ``split`` in ``path`` and their labels ``(M,)`` int64."""
    prefix = f"{split}/"
    members = zipimages.list_members(path, prefix=prefix)
    if not members:
        raise MixqError(
            f"archive {str(path)!r} has no images under {prefix!r} (split {split!r} of {dataset})"
        )
    if dataset == "cifar10":
        lookup = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
        labels = []
        for m in members:
            parts = m.split("/")
            if len(parts) != 3 or parts[1] not in lookup:
                raise MixqError(
                    f"archive {str(path)!r}: member {m!r} is not {split}/<class>/NNNN.jpg "
                    f"with a CIFAR-10 class"
                )
            labels.append(lookup[parts[1]])
    else:
        wnids = [m[len(prefix) :].split("_", 1)[0] for m in members]
        order = {w: i for i, w in enumerate(sorted(set(wnids)))}
        labels = [order[w] for w in wnids]
    return members, np.asarray(labels, dtype=np.int64)


def _as_indices(indices: Sequence[int] | np.ndarray | torch.Tensor, size: int, what: str) -> np.ndarray:
    arr = indices.numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise MixqError(
            f"{what} must be a 1-D sequence of integer positions, got shape {arr.shape} {arr.dtype}"
        )
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise MixqError(
            f"{what} must lie in [0, {size}) (the split has {size} images), got {arr.min()}..{arr.max()}"
        )
    return arr.astype(np.int64)


def _decode(
    dataset: str, split: str, path: Path, members: list[str], labels: np.ndarray, idx: np.ndarray
) -> ImageSet:
    arr = zipimages.decode_members(path, [members[i] for i in idx], crop=_SPECS[dataset].crop)  # (N, H, W, 3)
    images = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))  # (N, 3, H, W), a copy
    return ImageSet(
        images=images,
        labels=torch.from_numpy(labels[idx].copy()),
        name=dataset,
        split=split,
        indices=torch.from_numpy(idx.copy()),
    )


def split_size(dataset: str, split: str, data_root: str | os.PathLike | None = None) -> int:
    """Number of images in a split (reads only the archive's member table).

    Args:
        dataset: ``"cifar10"`` or ``"imagenet"``.
        split: a name from :data:`SPLITS`.
        data_root: folder holding ``cifar10-jpeg/`` and ``imagenet-sample/`` (resolved with
            :func:`mixq.paths.resolve_data_root`).

    Returns:
        The member count.
    """
    path = _archive(dataset, split, data_root)
    return len(_members_and_labels(dataset, split, path)[0])


def load_split(
    dataset: str,
    split: str,
    data_root: str | os.PathLike | None = None,
    indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> ImageSet:
    """Decode a split (or selected members of it) into uint8 tensors.

    Args:
        dataset: ``"cifar10"`` (splits ``"train"``, ``"test"``) or ``"imagenet"`` (split ``"sample"``).
        split: split name.
        data_root: folder holding ``cifar10-jpeg/`` and ``imagenet-sample/``; ``None`` looks it up with
            :func:`mixq.paths.resolve_data_root`, falling back to the embedded demo for CIFAR-10.
        indices: positions in the split's sorted member list; only these are decoded, in this order.
            ``None`` decodes the whole split.

    Returns:
        An :class:`ImageSet` with images ``(N, 3, H, W)`` uint8 (32x32 for CIFAR-10, 224x224 center
        crops for ImageNet) and labels ``(N,)`` int64.

    Raises:
        MixqError: unknown dataset or split, missing folder or archive, corrupt archive, bad indices.
    """
    path = _archive(dataset, split, data_root)
    members, labels = _members_and_labels(dataset, split, path)
    if indices is None:
        idx = np.arange(len(members), dtype=np.int64)
    else:
        idx = _as_indices(indices, len(members), "indices")
    return _decode(dataset, split, path, members, labels, idx)


@functools.lru_cache(maxsize=4)
def _validation_cached(path: Path, stamp: tuple[int, int]) -> np.ndarray | None:
    members, labels = _members_and_labels("cifar10", "train", path)
    reserved = np.zeros(len(members), dtype=bool)
    for seed in RESERVED_SEEDS:
        for n in RESERVED_SIZES:
            if n <= len(members):
                reserved[np.random.default_rng(seed).choice(len(members), size=n, replace=False)] = True
    chosen = []
    for c in range(len(CIFAR10_CLASSES)):
        free = np.flatnonzero((labels == c) & ~reserved)
        if free.size < 2 * VAL_PER_CLASS:  # the demo archive (20 per class) has none to spare
            return None
        chosen.append(free[:VAL_PER_CLASS])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def validation_positions(dataset: str, data_root: str | os.PathLike | None = None) -> np.ndarray | None:
    """Positions in the train split of the CIFAR-10 validation images (see the module docstring).

    Args:
        dataset: ``"cifar10"`` (other data sets have no validation split).
        data_root: see :func:`load_split`.

    Returns:
        Sorted int64 positions, :data:`VAL_PER_CLASS` per class; ``None`` when the train archive is too small
        to hold one (the embedded demo) or the data set has none.
    """
    if dataset != "cifar10":
        return None
    path = _archive(dataset, "train", data_root)
    st = path.stat()
    got = _validation_cached(path.resolve(), (st.st_size, st.st_mtime_ns))
    return None if got is None else got.copy()


def calibration_set(
    dataset: str,
    n: int = 50,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    split: str | None = None,
) -> ImageSet:
    """Draw a seeded random calibration sample, decoding only the chosen images.

    Positions are ``numpy.random.default_rng(seed).choice(M, n, replace=False)`` over the split's ``M``
    sorted members, kept in drawn order (classes come mixed). Same seed and split -> same images.

    CIFAR-10 samples from ``train`` minus the validation split (disjoint from ``val`` and ``test``): when
    the draw above hits a validation image, it is replaced by ``default_rng([seed, 1]).choice`` over the
    train positions outside ``val``. Either way the sample is a uniform draw from train minus val, and the
    reserved draws (:data:`RESERVED_SEEDS` x :data:`RESERVED_SIZES`) never need the replacement.

    ImageNet has only ``sample``, the same images :func:`test_set` uses: pass the result as
    ``test_set(..., exclude=calib)`` to evaluate on the held-out rest.

    Args:
        dataset: ``"cifar10"`` or ``"imagenet"``.
        n: sample size, ``1 <= n <= M``.
        seed: random seed.
        data_root: see :func:`load_split`.
        split: override the split sampled from (default ``train`` / ``sample``).

    Returns:
        An :class:`ImageSet` of ``n`` images; ``indices`` holds the drawn positions.

    Raises:
        MixqError: bad dataset/split, or ``n`` not in ``[1, M]``.
    """
    spec = _spec(dataset)
    split = spec.calib_split if split is None else split
    path = _archive(dataset, split, data_root)
    members, labels = _members_and_labels(dataset, split, path)
    val = validation_positions(dataset, data_root) if split == "train" else None
    allowed = len(members) - (0 if val is None else val.size)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n > allowed:
        what = f"the size of {dataset} split {split!r}" + ("" if val is None else f" minus its {val.size} "
                                                                                  f"validation images")
        raise MixqError(f"calibration size n={n!r} is invalid: expected an integer from 1 to {allowed} ({what})")
    idx = np.random.default_rng(seed).choice(len(members), size=int(n), replace=False).astype(np.int64)
    if val is not None and np.isin(idx, val).any():
        pool = np.setdiff1d(np.arange(len(members), dtype=np.int64), val)
        idx = np.random.default_rng([seed, 1]).choice(pool, size=int(n), replace=False).astype(np.int64)
    return _decode(dataset, split, path, members, labels, idx)


def _stratified(labels: np.ndarray, limit: int) -> np.ndarray:
    """Class-balanced deterministic subset of positions, returned sorted.

    Images are taken in rounds: round ``r`` holds the ``r``-th image (in member order) of every class.
    Whole rounds are taken while they fit; the remainder comes from the next round, from classes evenly
    spaced over that round's label order (so one-image-per-class ImageNet gets evenly spread classes).
    """
    rank = np.empty_like(labels)
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        rank[pos] = np.arange(pos.size)
    order = np.lexsort((labels, rank))  # by round, then label
    r_sorted = rank[order]
    chosen: list[np.ndarray] = []
    taken = 0
    for r in np.unique(r_sorted):
        group = order[r_sorted == r]
        if taken + group.size <= limit:
            chosen.append(group)
            taken += group.size
        else:
            k = limit - taken
            if k > 0:
                pick = np.floor((np.arange(k) + 0.5) * group.size / k).astype(np.int64)
                chosen.append(group[pick])
            break
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def test_set(
    dataset: str,
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    exclude: ImageSet | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    split: str | None = None,
) -> ImageSet:
    """Load the evaluation images: the CIFAR-10 ``test`` (or ``val``) split or the ImageNet ``sample``.

    ``limit`` takes a deterministic, class-balanced subset (see below), in member order; for CIFAR-10,
    ``limit=500`` is exactly the first 50 test images of each class, which is the embedded demo's test
    split. With a limit of ``k * 10`` CIFAR-10 gets the first ``k`` images of each class; otherwise the
    last partial round comes from evenly spaced classes. ImageNet (one image per class) gets ``limit``
    evenly spaced classes.

    Args:
        dataset: ``"cifar10"`` or ``"imagenet"``.
        data_root: see :func:`load_split`.
        limit: at most this many images (``None`` = all). Must be >= 1.
        exclude: positions (or an :class:`ImageSet` from the same split, e.g. an ImageNet calibration
            set) to leave out before applying ``limit``.
        split: ``None`` (the data set's test split) or ``"val"`` (CIFAR-10's validation split, carved from
            train; its :attr:`ImageSet.indices` are positions in the train split).

    Returns:
        An :class:`ImageSet` of the selected images, in member order.

    Raises:
        MixqError: bad dataset, missing/corrupt data, bad ``limit``, ``exclude`` from another split, or a
            validation split where there is none.
    """
    spec = _spec(dataset)
    if split is not None and split != spec.test_split and not (split == VAL_SPLIT and dataset == "cifar10"):
        raise MixqError(f"unknown evaluation split {split!r} for dataset {dataset!r}; expected "
                        f"{spec.test_split!r}" + (f" or {VAL_SPLIT!r}" if dataset == "cifar10" else ""))
    if split == VAL_SPLIT:
        return _validation_set(dataset, data_root, limit, exclude)
    split = spec.test_split
    path = _archive(dataset, split, data_root)
    members, labels = _members_and_labels(dataset, split, path)
    keep = np.ones(len(members), dtype=bool)
    if exclude is not None:
        if isinstance(exclude, ImageSet):
            if exclude.name != dataset or exclude.split != split or exclude.indices is None:
                raise MixqError(
                    f"exclude must be an ImageSet from {dataset} split {split!r} with indices, got "
                    f"{exclude.name} split {exclude.split!r}"
                )
            exclude = exclude.indices
        keep[_as_indices(exclude, len(members), "exclude")] = False
    return _limited(dataset, split, path, members, labels, np.flatnonzero(keep), limit)


def _limited(dataset: str, split: str, path: Path, members: list[str], labels: np.ndarray, pool: np.ndarray,
             limit: int | None, name: str | None = None) -> ImageSet:
    """Decode ``pool`` (positions), or its class-balanced subset of ``limit`` images."""
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise MixqError(f"test limit={limit!r} is invalid: expected a positive integer or None")
        if limit < pool.size:
            pool = pool[_stratified(labels[pool], int(limit))]
    out = _decode(dataset, split, path, members, labels, pool.astype(np.int64))
    return out if name is None else ImageSet(out.images, out.labels, dataset, name, out.indices)


def _validation_set(dataset: str, data_root: str | os.PathLike | None, limit: int | None,
                    exclude: ImageSet | Sequence[int] | np.ndarray | torch.Tensor | None) -> ImageSet:
    """The CIFAR-10 validation images (``split="val"``, indices in the train split)."""
    if exclude is not None:
        raise MixqError("exclude is for the ImageNet sample; the CIFAR-10 validation split is already disjoint "
                        "from every calibration draw")
    val = validation_positions(dataset, data_root)
    if val is None:
        raise MixqError(f"no validation split for {dataset}: it needs the full CIFAR-10 train archive "
                        f"({VAL_PER_CLASS} images per class are carved from it); the embedded demo is too small. "
                        f"Pass --data-root (a folder holding cifar10-jpeg/)")
    path = _archive(dataset, "train", data_root)
    members, labels = _members_and_labels(dataset, "train", path)
    return _limited(dataset, "train", path, members, labels, val, limit, name=VAL_SPLIT)


test_set.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def normalize(
    images_uint8: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Scale uint8 images to [0, 1] and standardise per channel.

    Args:
        images_uint8: uint8 ``(N, 3, H, W)`` (or ``(3, H, W)``).
        mean: 3 per-channel means (on the [0, 1] scale).
        std: 3 per-channel standard deviations (non-zero).

    Returns:
        float32 tensor of the same shape: ``(x / 255 - mean) / std``.

    Raises:
        MixqError: wrong dtype or shape, or mean/std not of length 3 / std containing zero.
    """
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8:
        raise MixqError(f"normalize expects a uint8 tensor of images, got {type(images_uint8).__name__} "
                        f"{getattr(images_uint8, 'dtype', '')}")  # fmt: skip
    if images_uint8.dim() not in (3, 4) or images_uint8.shape[-3] != 3:
        raise MixqError(f"normalize expects images of shape (N, 3, H, W), got {tuple(images_uint8.shape)}")
    m = torch.as_tensor(mean, dtype=torch.float32).flatten()
    s = torch.as_tensor(std, dtype=torch.float32).flatten()
    if m.numel() != 3 or s.numel() != 3 or bool((s == 0).any()):
        raise MixqError(f"normalize expects 3 means and 3 non-zero stds, got mean={mean!r} std={std!r}")
    x = images_uint8.to(torch.float32).div_(255.0)  # (N, 3, H, W) in [0, 1]
    return x.sub_(m.view(3, 1, 1)).div_(s.view(3, 1, 1))


def batches(
    imageset: ImageSet,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    batch_size: int = 256,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over an image set in order as normalised float batches.

    Args:
        imageset: the images to batch.
        mean: per-channel means, see :func:`normalize`.
        std: per-channel stds, see :func:`normalize`.
        batch_size: images per batch (the last batch may be smaller).

    Returns:
        An iterator of ``(x, y)``: x float32 ``(B, 3, H, W)``, y int64 ``(B,)``.

    Raises:
        MixqError: ``batch_size`` < 1 (raised at the call, not at the first ``next``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise MixqError(f"batch_size={batch_size!r} is invalid: expected a positive integer")
    size = int(batch_size)

    def _gen() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(imageset), size):
            yield (
                normalize(imageset.images[start : start + size], mean, std),
                imageset.labels[start : start + size],
            )

    return _gen()
