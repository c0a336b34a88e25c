"""Quantized multi-head attention, and PyTorch's fused Transformer fast path turned off around wrapped layers.

:class:`QuantMultiheadAttention` quantizes the packed input projection (``in_proj_weight``, one layer with
one input quantizer shared by query, key and value) and calls ``out_proj`` as a module, so the output
projection is an ordinary quantized Linear with its own input quantizer. The attention arithmetic itself
is torch's ``F.multi_head_attention_forward``, run with an identity output projection.

In eval mode ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` take a fused kernel that reads the
float weights directly and never calls the wrapped Linear layers; :func:`disable_fast_path` adds hooks that
switch ``torch.backends.mha`` fast path off for the duration of those modules' forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixq.errors import MixqError
from mixq.quant.modules import QuantMixin

FAST_PATH_MODULES: tuple[type[nn.Module], ...] = (nn.TransformerEncoderLayer, nn.TransformerEncoder)


class QuantMultiheadAttention(QuantMixin, nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` (query, key and value of ``embed_dim``) with a quantized input projection.

    The layer's weight is ``in_proj_weight`` ``(3E, E)``, quantized per output row; its input quantizer sees
    query, key and value. ``out_proj`` is wrapped separately as a :class:`~mixq.quant.modules.QuantLinear`.
    """

    float_class = nn.MultiheadAttention
    kind = "attention"

    @property
    def weight(self) -> nn.Parameter:  # type: ignore[override]
        """The packed input projection weight ``(3E, E)``."""
        return self.in_proj_weight

    @property
    def bias(self) -> nn.Parameter | None:  # type: ignore[override]
        """The packed input projection bias ``(3E,)`` or None."""
        return self.in_proj_bias

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention with quantized inputs and projections (same arguments and outputs as torch's).

        Returns:
            ``(output, attention weights or None)``.
        """
        q = self.input_quantizer(query)  # keep "is" identities: torch packs the projection for self-attention
        k = q if key is query else self.input_quantizer(key)
        v = q if value is query else k if value is key else self.input_quantizer(value)
        batched = query.dim() == 3
        if self.batch_first and batched:
            q_t = q.transpose(1, 0)
            k_t = q_t if k is q else k.transpose(1, 0)
            v_t = q_t if v is q else k_t if v is k else v.transpose(1, 0)
            q, k, v = q_t, k_t, v_t
        eye = torch.eye(self.embed_dim, dtype=q.dtype, device=q.device)
        out, weights = F.multi_head_attention_forward(
            q, k, v, self.embed_dim, self.num_heads, self.quantized_weight(), self.in_proj_bias, self.bias_k,
            self.bias_v, self.add_zero_attn, self.dropout, eye, None, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        out = self.out_proj(out)  # a module call, so the quantized output projection and its input quantizer run
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: D102
        raise MixqError("MultiheadAttention layers cannot be scored by weight-replacement proxies")

    def to_float(self, weight: torch.Tensor) -> nn.Module:  # noqa: D102
        raise MixqError("MultiheadAttention layers cannot be written as ONNX QDQ by mixq yet")


def call_macs_attention(module: nn.MultiheadAttention, inputs: tuple) -> int:
    """MACs of the input projection of one attention call: every query, key and value row times ``E x E``.

    Args:
        module: the attention layer.
        inputs: the call's (query, key, value).

    Returns:
        MACs of the call (over the whole batch).
    """
    return sum(t.numel() for t in inputs[:3]) * module.embed_dim


def _fast_path_off(module: nn.Module, args: tuple) -> None:
    module.__dict__.setdefault("_mixq_fast_path", []).append(torch.backends.mha.get_fastpath_enabled())
    torch.backends.mha.set_fastpath_enabled(False)


def _fast_path_restore(module: nn.Module, args: tuple, output: object) -> None:
    saved = module.__dict__.get("_mixq_fast_path")
    torch.backends.mha.set_fastpath_enabled(saved.pop() if saved else True)


def disable_fast_path(model: nn.Module) -> list[str]:
    """Make every Transformer encoder (layer) in ``model`` run its module-by-module path.

    Args:
        model: the model (hooks are added in place).

    Returns:
        The names of the modules given the hooks.
    """
    names = []
    for name, m in model.named_modules():
        if isinstance(m, FAST_PATH_MODULES):
            m.register_forward_pre_hook(_fast_path_off)
            m.register_forward_hook(_fast_path_restore, always_call=True)
            names.append(name)
    return names
