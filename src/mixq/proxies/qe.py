"""QE score: entropy of layer outputs under weight quantization, data-free."""

from __future__ import annotations

import numpy as np
import torch

from mixq.proxies.base import BITS, Proxy, capture_outputs, layer_forward, weight_at_bits
from mixq.proxies.registry import register_proxy
from mixq.quant.primitives import FLOAT_BITS


@register_proxy("qe")
class QEScore(Proxy):
    """Quantization-entropy score, after QE-Score (Sun et al., NeurIPS 2022, "Entropy-Driven
    Mixed-Precision Quantization for Deep Network Design"), as EMQ's ``qe_score`` baseline.

    What the EMQ notes give: entropy-based, from per-layer output standard deviations under a
    bit-dependent lookup table, data-free. Our reading (assumptions stated):

    - *Data-free*: the input is a standard Gaussian batch of ``x``'s shape (seeded); labels unused.
    - Features are modelled as Gaussian, whose entropy is ``log sigma`` up to a constant. Quantizing a
      layer's weights to ``b`` bits adds noise ``e_{l,b} = Q_b(W_l) * a_l - W_l * a_l`` to its output,
      with ``a_l`` the layer's input in the float pass.
    - The lookup table is ``T[l, b] = 0.5 * log(1 + sigma_y^2 / sigma_e^2)``: the information (nats)
      the quantized output keeps about the float output, i.e. the entropy of signal-plus-noise minus
      that of the noise, from the two standard deviations ``sigma_y = std(W_l a_l)`` and
      ``sigma_e = rms(e_{l,b})``. It is built once (one forward plus one layer call per layer and
      bit-width); float weights (32) use a noise floor of 1e-12 of the signal power.
    - ``S(b) = sum_l T[l, b_l]`` (entropies of independent layers add).
    """

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        table = np.zeros((len(modules), len(BITS)), dtype=np.float64)
        sig = np.zeros(len(modules), dtype=np.float64)
        with torch.no_grad():
            with capture_outputs(modules, inputs=True) as ins:
                model(z)
            for i, (m, calls) in enumerate(zip(modules, ins)):
                ref = [layer_forward(m, a, m.weight) for a in calls]
                var_y = float(torch.cat([r.reshape(-1) for r in ref]).double().var())
                sig[i] = var_y**0.5
                for k, b in enumerate(BITS):
                    if b == FLOAT_BITS:
                        noise = 0.0
                    else:
                        wq = weight_at_bits(m, b)
                        sq = sum(float((layer_forward(m, a, wq) - r).double().pow(2).sum()) for a, r in zip(calls, ref))
                        noise = sq / sum(r.numel() for r in ref)
                    noise = max(noise, 1e-12 * var_y, 1e-300)
                    table[i, k] = 0.5 * np.log1p(var_y / noise)
        return table, {"output_std": sig, "entropy": table}
