"""The built-in models: six CIFAR-10 checkpoints under the model root and EfficientNet-Lite0."""

from __future__ import annotations

from mixq.models.efficientnet import (
    convert_same_padding_convs,
    efficientnet_lite0,
    efficientnet_lite0_weights,
)
from mixq.models.mobilenetv2 import mobilenetv2_cifar
from mixq.models.registry import ModelSpec, register_model
from mixq.models.resnet_cifar import resnet18_cifar, resnet20, resnet32
from mixq.models.shufflenetv2 import shufflenetv2_x0_5_cifar

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _cifar(
    name: str,
    builder: object,
    file: str,
    top1: float,
    *,
    cifar_norm: bool = False,
    fmt: str = "plain",
) -> ModelSpec:
    # The sha256 prefix is the last "-"-separated part of the file stem.
    sha = file.rsplit("-", 1)[1].split(".", 1)[0]
    return ModelSpec(
        name=name,
        builder=builder,  # type: ignore[arg-type]
        checkpoint=f"cifar10/{file}",
        sha256_prefix=sha,
        dataset="cifar10",
        mean=CIFAR_MEAN if cifar_norm else IMAGENET_MEAN,
        std=CIFAR_STD if cifar_norm else IMAGENET_STD,
        input_size=32,
        num_classes=10,
        reference_top1=top1,
        state_dict_format=fmt,
    )


BUILTIN: tuple[ModelSpec, ...] = (
    _cifar("resnet20-jpeg", resnet20, "resnet20-jpeg-0e7622d0.pt", 88.2),
    _cifar("mobilenetv2-jpeg", mobilenetv2_cifar, "mobilenetv2-jpeg-414b7652.pt", 88.4),
    _cifar("resnet18-jpeg", resnet18_cifar, "resnet18-jpeg-14bb6d18.pt", 90.4),
    _cifar(
        "shufflenetv2-x0.5",
        shufflenetv2_x0_5_cifar,
        "cifar10_shufflenetv2_x0_5-1308b4e9.pt",
        83.4,
        cifar_norm=True,
    ),
    _cifar("resnet20", resnet20, "resnet20-12fca82f.th", 81.0, fmt="module_prefixed"),
    _cifar("resnet32", resnet32, "resnet32-d509ac18.th", 82.6, fmt="module_prefixed"),
    ModelSpec(
        name="efficientnet-lite0",
        builder=efficientnet_lite0,
        checkpoint=None,
        sha256_prefix="57934424",
        dataset="imagenet",
        # The model expects x * 2 - 1 for x in [0, 1], i.e. (x - 0.5) / 0.5.
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=224,
        num_classes=1000,
        reference_top1=88.4,  # on shared/data/imagenet-sample, not the full validation set
        weights_path=efficientnet_lite0_weights,
        finalize=convert_same_padding_convs,
    ),
)

for _spec in BUILTIN:
    register_model(_spec)
