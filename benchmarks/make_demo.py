"""Build the embedded demo data shipped inside the package (``src/mixq/_demo/``).

Writes

* ``cifar10-demo.zip`` (stored, not compressed): ``train/<class>/NNNN.jpg``, the first 20 train images
  of each class (200), and ``test/<class>/NNNN.jpg``, the first 50 test images of each class (500).
  The original JPEG bytes are copied unchanged from ``<data_root>/cifar10-jpeg/{train,test}.zip``, so
  the demo test split equals ``mixq.data.test_set("cifar10", limit=500)`` on the full data.
* ``resnet20-jpeg.pt``: a copy of ``<model_root>/cifar10/resnet20-jpeg-0e7622d0.pt``.

Usage::

    python benchmarks/make_demo.py [--data-root DIR] [--model-root DIR]
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

from mixq.data.datasets import CIFAR10_CLASSES
from mixq.errors import MixqError
from mixq.paths import DEMO_DIR, resolve_data_root, resolve_model_root

PER_CLASS = {"train": 20, "test": 50}  # images per class copied from each split
CHECKPOINT = "resnet20-jpeg-0e7622d0.pt"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # member timestamp, so rebuilds give identical bytes


def build_zip(src_dir: Path, out: Path) -> int:
    """Copy the first images of each class of both splits into one stored zip.

    Args:
        src_dir: the ``cifar10-jpeg`` folder holding ``train.zip`` and ``test.zip``.
        out: the demo archive to write.

    Returns:
        The number of images written.
    """
    count = 0
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as dst:
        for split, per_class in PER_CLASS.items():
            src_path = src_dir / f"{split}.zip"
            if not src_path.is_file():
                raise MixqError(
                    f"missing archive {str(src_path)!r} (expected the CIFAR-10 JPEG {split} split)"
                )
            with zipfile.ZipFile(src_path) as src:
                names = set(src.namelist())
                for cls in CIFAR10_CLASSES:
                    members = sorted(
                        n for n in names if n.startswith(f"{split}/{cls}/") and n.endswith(".jpg")
                    )
                    if len(members) < per_class:
                        raise MixqError(f"{str(src_path)!r} has only {len(members)} images of class {cls!r}")
                    for name in members[:per_class]:
                        info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
                        info.compress_type = zipfile.ZIP_STORED
                        dst.writestr(info, src.read(name))
                        count += 1
    tmp.replace(out)
    return count


def main(argv: list[str] | None = None) -> None:
    """Build the demo archive and copy the demo checkpoint.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder holding cifar10-jpeg/")
    parser.add_argument("--model-root", default=None, help="folder holding cifar10/" + CHECKPOINT)
    args = parser.parse_args(argv)

    data_root = resolve_data_root(args.data_root)
    model_root = resolve_model_root(args.model_root)
    if data_root is None or model_root is None:
        raise SystemExit("make_demo: pass --data-root and --model-root (no ../shared found)")
    DEMO_DIR.mkdir(parents=True, exist_ok=True)

    out_zip = DEMO_DIR / "cifar10-demo.zip"
    n = build_zip(data_root / "cifar10-jpeg", out_zip)
    ckpt_src = model_root / "cifar10" / CHECKPOINT
    if not ckpt_src.is_file():
        raise MixqError(f"missing checkpoint {str(ckpt_src)!r}")
    ckpt_dst = DEMO_DIR / "resnet20-jpeg.pt"
    shutil.copyfile(ckpt_src, ckpt_dst)

    total = out_zip.stat().st_size + ckpt_dst.stat().st_size
    print(f"{out_zip}: {n} images, {out_zip.stat().st_size / 1e6:.2f} MB")
    print(f"{ckpt_dst}: {ckpt_dst.stat().st_size / 1e6:.2f} MB")
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
