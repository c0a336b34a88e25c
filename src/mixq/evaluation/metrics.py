"""Evaluators: top-1 accuracy on a test split and output MSE against float logits, batched."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from mixq.errors import MixqError
from mixq.progress import progress_bar


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Model outputs for a tensor of inputs, computed in batches.

    Args:
        model: any module mapping ``(B, C, H, W)`` to ``(B, K)``.
        x: inputs ``(N, C, H, W)``.
        batch_size: batch size.

    Returns:
        Outputs ``(N, K)``.
    """
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def output_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error between two output tensors (EvoQ eq. 3 when ``b`` are float logits).

    Args:
        a: outputs ``(N, K)``.
        b: reference outputs, same shape.

    Returns:
        ``mean((a - b)^2)`` as a float.
    """
    return float(torch.mean((a - b) ** 2))


@torch.no_grad()
def accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    total: int | None = None,
    progress: bool = True,
    desc: str = "top-1",
) -> float:
    """Top-1 accuracy in percent over labelled batches.

    Args:
        model: classifier.
        batches: iterable of ``(inputs (B, C, H, W), labels (B,))``.
        total: number of batches, for the progress bar.
        progress: show a progress bar.
        desc: progress bar label.

    Returns:
        Top-1 accuracy in percent.
    """
    correct = seen = 0
    device = next((t.device for t in itertools.chain(model.parameters(), model.buffers())), None)
    for x, y in progress_bar(batches, total=total, enabled=progress, desc=desc, leave=False):
        if device is not None and x.device != device:  # batches come from CPU data; the model may be on a GPU
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != y.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MixqError(f"the model returned {shape} for a batch of {y.shape[0]} images; a classifier must return "
                            f"logits ({y.shape[0]}, classes)")
        correct += int((out.argmax(dim=1) == y).sum())
        seen += int(y.numel())
    return 100.0 * correct / max(seen, 1)
