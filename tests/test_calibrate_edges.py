"""Edge cases of feature calibration, checked against hand-written references.

The augmentation, the feature tap, the loss, the optimizer and the whole training loop of
:mod:`mixq.evoq.calibrate` are each compared with an independent re-implementation of what the module
documents, on tiny models where every step can be recomputed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from typing import Any

import pytest
import torch
from torch import nn
from tqdm.auto import tqdm

import mixq.evoq.calibrate as cal
from mixq.errors import MixqError
from mixq.evoq.calibrate import CalibrationConfig, augment_batch, calibrate
from mixq.quant.model import QuantModel
from mixq.quant.primitives import FLOAT_BITS, asym_qparams
from mixq.quant.ranges import get_range_method

# ------------------------------------------------------------------------------------------------
# augment_batch
# ------------------------------------------------------------------------------------------------


def _reflect(k: torch.Tensor, size: int) -> torch.Tensor:
    """Source index of padded position ``k`` (relative to the image) under reflect padding."""
    k = torch.where(k < 0, -k, k)
    return torch.where(k >= size, 2 * (size - 1) - k, k)


def _augment_by_hand(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift by (dy - ph, dx - pw) with reflected borders, then flip when rand < 0.5, by index arithmetic."""
    b, c, h, w = x.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    dy = torch.randint(0, 2 * ph + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pw + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    rows = _reflect(torch.arange(h)[None, :] + dy[:, None] - ph, h)  # (b, h)
    cols = _reflect(torch.arange(w)[None, :] + dx[:, None] - pw, w)  # (b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


@pytest.mark.parametrize("shape", [(8, 3, 16, 24), (8, 2, 8, 8), (6, 1, 8, 12), (6, 1, 12, 8), (5, 2, 9, 17)])
def test_augment_batch_matches_hand_reference(shape: tuple[int, int, int, int]) -> None:
    """Pad 1/8 of each side (at least 1), draw dy, dx, flip from ``gen`` in that order, crop and flip."""
    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    got = augment_batch(x, torch.Generator().manual_seed(5))
    want = _augment_by_hand(x, torch.Generator().manual_seed(5))
    assert got.shape == x.shape
    assert torch.equal(got, want)


def test_augment_batch_draws_only_from_its_generator() -> None:
    """The global RNG plays no part: reseeding it changes nothing, and the generator advances by 3 draws."""
    x = torch.randn(16, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    outs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        outs.append(augment_batch(x, torch.Generator().manual_seed(9)))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], _augment_by_hand(x, torch.Generator().manual_seed(9)))


def test_augment_batch_flips_strictly_below_one_half() -> None:
    """A draw of exactly 0.5 does not flip (``rand < 0.5``); seed 11843 gives 0.5 for image 133 of 1024."""
    gen = torch.Generator().manual_seed(11843)
    torch.randint(0, 3, (1024,), generator=gen)
    torch.randint(0, 3, (1024,), generator=gen)
    assert float(torch.rand(1024, generator=gen)[133]) == 0.5
    x = torch.arange(1024 * 64, dtype=torch.float32).reshape(1024, 1, 8, 8)
    got = augment_batch(x, torch.Generator().manual_seed(11843))
    assert torch.equal(got, _augment_by_hand(x, torch.Generator().manual_seed(11843)))
    flipped = torch.stack([got[133, 0, :, 7 - j] for j in range(8)], 1)
    assert not torch.equal(got[133, 0], flipped)


# ------------------------------------------------------------------------------------------------
# _FeatureTap
# ------------------------------------------------------------------------------------------------


class _Pair(nn.Module):
    """Returns a tuple (main output, something else), like attention layers."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2.0, torch.ones(7)


def test_tap_keeps_first_element_of_a_tuple_output() -> None:
    m = _Pair()
    tap = cal._FeatureTap([m], ["pair"])
    x = torch.arange(6.0).reshape(3, 2)
    m(x)
    (feat,) = tap.take(3)
    assert torch.equal(feat, x * 2.0)
    tap.close()
    assert not m._forward_hooks


def test_tap_hands_a_single_call_over_without_a_copy_and_the_loss_is_the_flat_mse() -> None:
    """A layer called once gives its output itself (channels-last too); the loss matches the flattened formula."""
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    tap = cal._FeatureTap([conv], ["conv"])
    x = torch.randn(5, 3, 8, 8).to(memory_format=torch.channels_last)
    out = conv(x)
    (feat,) = tap.take(5)
    assert feat is out
    target = torch.randn(5, 4, 6, 6)  # another layout than the feature's: the loss is elementwise
    logits, t_logits = torch.randn(5, 10), torch.randn(5, 10)
    config = cal.CalibrationConfig(alpha=0.7, beta=1.3)
    got = cal._loss(logits, [feat], t_logits, [target], [2.0], config)
    flat = ((feat.permute(0, 2, 3, 1).reshape(5, -1) - target.permute(0, 2, 3, 1).reshape(5, -1)) ** 2).mean()
    want = 0.7 * ((logits - t_logits) ** 2).mean() + 1.3 * flat / 2.0
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    tap.close()


def test_tap_concatenates_calls_and_fills_uncalled_layers() -> None:
    """Two calls of a layer are concatenated along the feature axis; a layer not called gives (n, 0)."""
    a, b = nn.Identity(), nn.Identity()
    tap = cal._FeatureTap([a, b], ["a", "b"])
    x1 = torch.arange(6.0).reshape(3, 2)
    x2 = torch.arange(6.0, 15.0).reshape(3, 3)
    a(x1)
    a(x2)
    fa, fb = tap.take(3)
    assert torch.equal(fa, torch.tensor([[0.0, 1, 6, 7, 8], [2, 3, 9, 10, 11], [4, 5, 12, 13, 14]]))
    assert fb.shape == (3, 0) and fb.dtype == torch.float32
    # forgotten after take
    fa2, fb2 = tap.take(3)
    assert fa2.shape == (3, 0) and fb2.shape == (3, 0)
    tap.close()


def test_tap_with_fewer_names_than_layers_is_an_error() -> None:
    a, b = nn.Identity(), nn.Identity()
    tap = cal._FeatureTap([a, b], ["a"])
    a(torch.zeros(2, 1))
    with pytest.raises(ValueError) as excinfo:
        tap.take(2)
    assert excinfo.type is ValueError
    tap.close()


def test_per_sample_batch_first_and_one_dimensional() -> None:
    out = torch.arange(4.0)
    assert torch.equal(cal._FeatureTap._per_sample(out, 4, "l"), out.reshape(4, 1))
    out3 = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(cal._FeatureTap._per_sample(out3, 2, "l"), out3.reshape(2, 12))


def test_per_sample_sequence_first_outputs_are_transposed() -> None:
    """(L, n, E) -> (n, L * E) with sample b's rows out[0, b], out[1, b], ...; (L, n) -> (n, L)."""
    out = torch.arange(30.0).reshape(3, 2, 5)  # L=3, n=2, E=5
    want = torch.stack([torch.cat([out[t, b] for t in range(3)]) for b in range(2)])
    assert torch.equal(cal._FeatureTap._per_sample(out, 2, "l"), want)
    out2 = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(cal._FeatureTap._per_sample(out2, 2, "l"), torch.tensor([[0.0, 2, 4], [1, 3, 5]]))


@pytest.mark.parametrize(("shape", "n"), [((3, 4), 2), ((5,), 7), ((3, 5, 2), 2)])
def test_per_sample_without_batch_axis_raises(shape: tuple[int, ...], n: int) -> None:
    """Only axis 0 or 1 can be the batch axis."""
    with pytest.raises(MixqError) as excinfo:
        cal._FeatureTap._per_sample(torch.zeros(shape), n, "blk.fc")
    assert str(excinfo.value) == (f"layer 'blk.fc' output {shape} has no batch axis of size {n}: calibrate "
                                  "with features='output'")


# ------------------------------------------------------------------------------------------------
# _loss
# ------------------------------------------------------------------------------------------------


def _cfg(**kw: Any) -> CalibrationConfig:
    base: dict[str, Any] = {"epochs": 2, "learn_scale": False, "augment": False, "schedule": "constant",
                            "lr_scaling": "absolute"}
    return CalibrationConfig(**{**base, **kw})


def test_loss_by_hand_skips_empty_features_and_keeps_single_elements() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    t_logits = torch.tensor([[0.0, 2.0, 1.0], [0.5, 1.0, 3.0]])  # squared errors 1, 0, 1, 0, 4, 0
    f1, t1 = torch.tensor([[1.0, 3.0], [2.0, 2.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]])  # 1, 4, 0, 4
    f2, t2 = torch.zeros(2, 0), torch.zeros(2, 0)
    f3, t3 = torch.tensor([[5.0]]), torch.tensor([[2.0]])  # 9
    loss = cal._loss(logits, [f1, f2, f3], t_logits, [t1, t2, t3], [2.0, 1.0, 3.0], _cfg(alpha=0.5, beta=4.0))
    want = 0.5 * (6.0 / 6) + 4.0 * ((9.0 / 4) / 2.0 + 9.0 / 3.0) / 2
    assert float(loss) == pytest.approx(want, rel=1e-6)


def test_loss_with_only_empty_features_is_the_logit_term() -> None:
    logits, t_logits = torch.ones(2, 2), torch.zeros(2, 2)
    loss = cal._loss(logits, [torch.zeros(2, 0)], t_logits, [torch.zeros(2, 0)], [1.0], _cfg(alpha=2.0))
    assert float(loss) == 2.0


def test_loss_with_beta_zero_ignores_features_entirely() -> None:
    """beta = 0: the feature lists are not even looked at (mismatched shapes do not raise)."""
    logits, t_logits = torch.full((2, 2), 3.0), torch.ones(2, 2)
    loss = cal._loss(logits, [torch.zeros(2, 3)], t_logits, [torch.zeros(2, 4)], [1.0],
                     _cfg(alpha=1.0, beta=0.0, features="output"))
    assert float(loss) == 4.0


def test_loss_feature_shape_mismatch_message() -> None:
    with pytest.raises(MixqError) as excinfo:
        cal._loss(torch.zeros(2, 2), [torch.zeros(2, 4)], torch.zeros(2, 2), [torch.zeros(2, 3)], [1.0], _cfg())
    assert str(excinfo.value) == ("a layer's features differ between the float and the quantized model "
                                  "((2, 3) vs (2, 4)): a data-dependent branch? Calibrate with features='output'")


def test_loss_feature_lists_of_different_lengths_are_an_error() -> None:
    f = [torch.zeros(2, 3), torch.ones(2, 3)]
    with pytest.raises(ValueError) as excinfo:
        cal._loss(torch.zeros(2, 2), f, torch.zeros(2, 2), f[:1], [1.0, 1.0], _cfg())
    assert excinfo.type is ValueError


# ------------------------------------------------------------------------------------------------
# _make_optimizer
# ------------------------------------------------------------------------------------------------


def test_make_optimizer_sgd_constant() -> None:
    p = [nn.Parameter(torch.zeros(3))]
    opt, sched = cal._make_optimizer(p, p, _cfg(optimizer="sgd", lr=0.02, momentum=0.5, weight_decay=0.01))
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.5, 0.01)
    assert group["params"] == p
    assert sched is None


def test_make_optimizer_adam_cosine() -> None:
    p = [nn.Parameter(torch.zeros(3))]
    opt, sched = cal._make_optimizer(p, p, _cfg(optimizer="adam", lr=0.03, weight_decay=0.002, schedule="cosine",
                                                epochs=7))
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.03, 0.002)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert sched.T_max == 7


def test_make_optimizer_relative_scales_each_tensor_by_its_size_reference() -> None:
    w = nn.Parameter(torch.full((4,), 0.5))  # RMS 0.5
    b = nn.Parameter(torch.zeros(2))  # a bias takes its weight's RMS
    z = nn.Parameter(torch.zeros(3))  # sized by itself: all zero -> the floor, 1e-3 of the largest RMS
    opt, _ = cal._make_optimizer([w, b, z], [w, w, z], _cfg(lr=0.1, lr_scaling="relative"))
    lrs = [g["lr"] for g in opt.param_groups]
    assert [g["params"] for g in opt.param_groups] == [[w], [b], [z]]
    assert lrs == pytest.approx([0.05, 0.05, 0.1 * 0.5e-3], rel=1e-6)


def test_relative_lr_moves_small_and_large_weights_by_the_same_fraction() -> None:
    """One Adam step moves every element by about lr (sign of its gradient): relative scaling turns that into
    the same fraction of each tensor's size, so a tensor 100x smaller moves 100x less in absolute terms."""
    small = nn.Parameter(torch.full((8,), 0.01))
    large = nn.Parameter(torch.full((8,), 1.0))
    opt, _ = cal._make_optimizer([small, large], [small, large], _cfg(lr=0.1, lr_scaling="relative"))
    (small.sum() + large.sum()).backward()
    opt.step()
    assert torch.allclose(0.01 - small.detach(), torch.full((8,), 0.001), rtol=1e-3)
    assert torch.allclose(1.0 - large.detach(), torch.full((8,), 0.1), rtol=1e-3)


def test_lr_scaling_is_validated() -> None:
    with pytest.raises(MixqError, match="lr_scaling"):
        CalibrationConfig(lr_scaling="per-layer")


# ------------------------------------------------------------------------------------------------
# small models
# ------------------------------------------------------------------------------------------------


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def _conv_setup(n: int = 10) -> tuple[QuantModel, torch.Tensor]:
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    qm = QuantModel(_conv_model(), calib=x)
    qm.set_bits({"0": 4, "3": 3, "7": 3})
    return qm, x


class _Branchy(nn.Module):
    """``b`` is only used for batches of more than 2 samples."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if x.shape[0] > 2:
            y = y + self.b(x)
        return y


class _Repeat(nn.Module):
    """``a`` is called twice for batches of more than 2 samples, once otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if x.shape[0] > 2:
            y = self.a(y)
        return y


class _NoBatchAxis(nn.Module):
    """Layer ``c`` runs on a constant (7, 4) buffer: its output has no batch axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.c = nn.Linear(4, 6)
        self.register_buffer("const", torch.randn(7, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) + self.c(self.const).mean()


def _quant(model: nn.Module, bits: int = 4) -> QuantModel:
    torch.manual_seed(0)
    qm = QuantModel(model, act_bits=32)
    qm.set_bits(bits)
    return qm


# ------------------------------------------------------------------------------------------------
# a hand-written calibration loop
# ------------------------------------------------------------------------------------------------


def _run(model: QuantModel, xb: torch.Tensor, float_mode: bool, feats: bool) -> tuple[torch.Tensor, list]:
    """Logits and, when ``feats``, each quantized layer's output flattened per sample."""
    store: dict[str, torch.Tensor] = {}
    hooks = [model.layers[k].register_forward_hook(lambda _m, _a, o, k=k: store.__setitem__(k, o))
             for k in model.layer_names] if feats else []
    try:
        with model.float_mode() if float_mode else contextlib.nullcontext():
            out = model(xb)
    finally:
        for h in hooks:
            h.remove()
    return out, [store[k].reshape(xb.shape[0], -1) for k in model.layer_names] if feats else []


def _formula(out: torch.Tensor, feats: list, tl: torch.Tensor, tf: list, scales: list[float],
             cfg: CalibrationConfig) -> torch.Tensor:
    """alpha * MSE(logits) + beta * mean over layers of MSE(feature) / scale."""
    loss = cfg.alpha * ((out - tl) ** 2).mean()
    if feats:
        loss = loss + cfg.beta * sum(((f - t) ** 2).mean() / s for f, t, s in zip(feats, tf, scales)) / len(feats)
    return loss


def _targets(qm: QuantModel, x: torch.Tensor, cfg: CalibrationConfig) -> tuple[torch.Tensor, list, list[float]]:
    """The float model's logits and features, run in batches of ``batch_size`` like the student's."""
    use_feats = cfg.features == "layers" and cfg.beta > 0
    bs = min(cfg.batch_size, x.shape[0])
    with torch.no_grad():
        runs = [_run(qm, x[i:i + bs], True, use_feats) for i in range(0, x.shape[0], bs)]
    t_logits = torch.cat([r[0] for r in runs])
    t_feats = [torch.cat([r[1][k] for r in runs]) for k in range(len(runs[0][1]))]
    scales = [float((f ** 2).mean()) if cfg.normalize_features else 1.0 for f in t_feats]
    return t_logits, t_feats, scales


def _dataset_loss_by_hand(qm: QuantModel, x: torch.Tensor, targets: tuple, cfg: CalibrationConfig) -> float:
    """The loss over all samples at once (equal to the sample-weighted mean of the batch losses)."""
    t_logits, t_feats, scales = targets
    bs = min(cfg.batch_size, x.shape[0])
    with torch.no_grad():
        runs = [_run(qm, x[i:i + bs], False, bool(t_feats)) for i in range(0, x.shape[0], bs)]
    out = torch.cat([r[0] for r in runs])
    feats = [torch.cat([r[1][k] for r in runs]) for k in range(len(t_feats))]
    return float(_formula(out, feats, t_logits, t_feats, scales, cfg))


def _calibrate_by_hand(qm: QuantModel, x: torch.Tensor, cfg: CalibrationConfig) -> list[float]:
    """Algorithm 2 as documented: shuffled batches, augmented views with a frozen float teacher, Adam/SGD."""
    n = x.shape[0]
    bs = min(cfg.batch_size, n)
    layers = [qm.layers[k] for k in qm.layer_names]
    use_feats = cfg.features == "layers" and cfg.beta > 0
    teacher = copy.deepcopy(qm) if cfg.augment else None
    t_logits, t_feats, scales = _targets(qm, x, cfg)
    grid = {}  # layer -> its learned scale, i.e. its quantization step per channel
    if cfg.learn_scale:
        grid = {id(m): m.weight_quantizer.freeze_grid(m.weight, method=cfg.grid_init) for m in layers
                if m.weight_quantizer.bits != FLOAT_BITS}

    def ref(m: nn.Module) -> torch.Tensor:
        """The tensor whose RMS scales the rate of the layer's weight and bias."""
        if cfg.lr_scaling != "step" or m.weight_quantizer.bits == FLOAT_BITS:
            return m.weight
        if id(m) in grid:
            return grid[id(m)]
        # the layer's own range: per-channel asymmetric grid over [min(lo, 0), max(hi, 0)]
        lo, hi = get_range_method(m.weight_quantizer.method)(m.weight.detach(), m.weight_quantizer.bits, 0)
        return (hi.clamp(min=0) - lo.clamp(max=0)) / (2 ** m.weight_quantizer.bits - 1)

    params = [m.weight for m in layers]
    refs = [ref(m) for m in layers]
    if cfg.train_bias:
        params += [m.bias for m in layers if m.bias is not None]
        refs += [ref(m) for m in layers if m.bias is not None]
    params += list(grid.values())
    refs += list(grid.values())
    rms = [float(r.detach().double().pow(2).mean().sqrt()) for r in refs]
    floor = max(max(rms) * 1e-3, 1e-12)
    base = [cfg.lr * max(r, floor) if cfg.lr_scaling != "absolute" else cfg.lr for r in rms]
    for p in params:
        p.requires_grad_(True)
    groups = [{"params": [p]} for p in params]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        factor = (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2 if cfg.schedule == "cosine" else 1.0
        for g, b in zip(opt.param_groups, base, strict=True):
            g["lr"] = b * factor
        order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        total = 0.0
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            if teacher is not None:
                xb = _augment_by_hand(x[idx], gen)
                with torch.no_grad():
                    tl, tf = _run(teacher, xb, True, use_feats)
            else:
                xb, tl, tf = x[idx], t_logits[idx], [f[idx] for f in t_feats]
            out, feats = _run(qm, xb, False, use_feats)
            loss = _formula(out, feats, tl, tf, scales, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return history


def _state(qm: QuantModel) -> list[torch.Tensor]:
    out = []
    for m in qm.layers.values():
        out.append(m.weight.detach().clone())
        if m.bias is not None:
            out.append(m.bias.detach().clone())
        out += [g[0].detach().clone() for g in m.weight_quantizer.grids.values()]
    return out


def _compare_with_hand_loop(qm: QuantModel, x: torch.Tensor, cfg: CalibrationConfig) -> cal.CalibrationResult:
    other = copy.deepcopy(qm)
    before = _state(qm)
    targets = _targets(qm, x, cfg)
    initial = _dataset_loss_by_hand(qm, x, targets, cfg)
    result = calibrate(qm, x, cfg, progress=False)
    history = _calibrate_by_hand(other, x, cfg)
    assert result.history == pytest.approx(history, rel=1e-4, abs=1e-7)
    got, want = _state(qm), _state(other)
    assert len(got) == len(want)
    for a, b, w0 in zip(got, want, before + [None] * (len(got) - len(before)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        if w0 is not None and w0.shape == a.shape and w0.numel() > 1:
            assert not torch.equal(a, w0)  # every weight and bias was trained
    assert result.initial_loss == pytest.approx(initial, rel=1e-5)
    assert result.final_loss == pytest.approx(_dataset_loss_by_hand(qm, x, targets, cfg), rel=1e-5)
    assert not any(p.requires_grad for p in qm.parameters())
    return result


def test_shuffled_batches_match_the_hand_loop() -> None:
    """n=10 in batches of 4 (4, 4, 2), shuffled by the seeded generator, features and biases trained."""
    qm, x = _conv_setup(10)
    cfg = CalibrationConfig(epochs=3, lr=1e-3, batch_size=4, learn_scale=False, augment=False, schedule="constant",
                            seed=4, lr_scaling="absolute")
    torch.manual_seed(123)
    _compare_with_hand_loop(qm, x, cfg)


def test_augmented_full_batch_with_learned_scale_matches_the_hand_loop() -> None:
    """batch_size >= n: one unshuffled batch per epoch, so the generator feeds the augmentation alone."""
    qm, x = _conv_setup(10)
    cfg = CalibrationConfig(epochs=3, lr=1e-3, batch_size=16, augment=True, schedule="cosine", seed=2,
                            lr_scaling="absolute")
    _compare_with_hand_loop(qm, x, cfg)


def test_relative_rates_with_learned_scale_match_the_hand_loop() -> None:
    """Relative scaling: each weight, bias (its weight's RMS) and grid scale at its own rate."""
    qm, x = _conv_setup(10)
    cfg = CalibrationConfig(epochs=3, lr=2.5e-3, batch_size=4, augment=True, schedule="cosine", seed=5,
                            lr_scaling="relative")
    _compare_with_hand_loop(qm, x, cfg)


def test_default_rates_are_step_scaled_and_match_the_hand_loop() -> None:
    """The default since #13's fourth round: step scaling at lr 4e-3."""
    qm, x = _conv_setup(10)
    cfg = CalibrationConfig(epochs=3, batch_size=4, seed=5)
    assert (cfg.lr, cfg.lr_scaling) == (4e-3, "step")
    _compare_with_hand_loop(qm, x, cfg)


@pytest.mark.parametrize("learn_scale", [True, False])
def test_step_rates_match_the_hand_loop(learn_scale: bool) -> None:
    """Step scaling: each layer's weight and bias at lr x the RMS of its quantization step (the learned grid's
    scale, or the layer's own range), the 32-bit layer at its weight's RMS."""
    qm, x = _conv_setup(10)
    qm.set_bits({"0": 2, "3": 8, "7": 32})
    cfg = CalibrationConfig(epochs=3, batch_size=4, augment=True, schedule="cosine", seed=5, lr_scaling="step",
                            learn_scale=learn_scale)
    _compare_with_hand_loop(qm, x, cfg)


def test_step_rates_move_a_2_bit_layer_85x_further_than_an_8_bit_one() -> None:
    """The same weights at 2 and 8 bits under a min-max grid: the step is the per-channel range over 2^b - 1
    levels, so step scaling gives the 2-bit layer a rate (2^8 - 1) / (2^2 - 1) = 85x larger."""
    qm, _ = _conv_setup(10)
    m = qm.layers[qm.layer_names[1]]
    m.weight_quantizer.method = "minmax"
    w = m.weight.detach().flatten(1)
    steps = {}
    for bits in (2, 8):
        m.weight_quantizer.bits = bits
        steps[bits] = cal._step_of(m)
        want = (w.amax(1).clamp(min=0) - w.amin(1).clamp(max=0)) / (2 ** bits - 1)
        torch.testing.assert_close(steps[bits], want, rtol=1e-6, atol=1e-9)
    m.weight_quantizer.bits = FLOAT_BITS
    assert cal._step_of(m) is m.weight  # a float layer: its weight's size, as relative scaling
    a, b = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    opt, _ = cal._make_optimizer([a, b], [steps[2], steps[8]], _cfg(lr=0.1, lr_scaling="step"))
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] / lrs[1] == pytest.approx(85.0, rel=1e-5)


def test_augmented_sgd_batches_match_the_hand_loop() -> None:
    qm, x = _conv_setup(10)
    cfg = CalibrationConfig(epochs=2, lr=1e-2, optimizer="sgd", momentum=0.8, weight_decay=1e-3, batch_size=10,
                            augment=True, learn_scale=False, schedule="constant", normalize_features=False, seed=1,
                            alpha=0.5, beta=2.0, lr_scaling="absolute")
    _compare_with_hand_loop(qm, x, cfg)


def test_layer_skipped_by_a_batch_gets_no_adam_step() -> None:
    """Gradients are reset to None: a layer unused by the short batch is not moved by Adam's momentum."""
    qm = _quant(_Branchy())
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))  # 2-D inputs are accepted
    cfg = CalibrationConfig(epochs=3, lr=1e-2, batch_size=3, features="output", learn_scale=False, augment=False,
                            schedule="constant", seed=0, lr_scaling="absolute")
    _compare_with_hand_loop(qm, x, cfg)


def test_learned_grid_starts_from_grid_init() -> None:
    """grid_init='omse' on a min/max model: the frozen grid is OMSE's for the initial weight (lr ~ 0)."""
    qm, x = _conv_setup(6)
    w0 = {k: m.weight.detach().clone() for k, m in qm.layers.items()}
    calibrate(qm, x, CalibrationConfig(epochs=1, lr=1e-12, augment=False, grid_init="omse"), progress=False)
    for k, m in qm.layers.items():
        bits = m.weight_quantizer.bits
        scale, zp = m.weight_quantizer.grids[bits]
        omse_scale, omse_zp = asym_qparams(*get_range_method("omse")(w0[k], bits, 0), bits)
        minmax_scale, _ = asym_qparams(*get_range_method("minmax")(w0[k], bits, 0), bits)
        torch.testing.assert_close(scale, omse_scale, rtol=1e-6, atol=1e-9)
        assert torch.equal(zp, omse_zp)
        assert not torch.allclose(scale, minmax_scale, rtol=1e-3)


# ------------------------------------------------------------------------------------------------
# feature taps in calibrate: when they exist and what they report
# ------------------------------------------------------------------------------------------------


def test_layer_without_batch_axis_message() -> None:
    qm = _quant(_NoBatchAxis())
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MixqError) as excinfo:
        calibrate(qm, x, CalibrationConfig(epochs=1, augment=False), progress=False)
    assert str(excinfo.value) == ("layer 'c' output (7, 6) has no batch axis of size 5: calibrate "
                                  "with features='output'")
    assert all(not m._forward_hooks for m in qm.layers.values())


@pytest.mark.parametrize("kwargs", [{"features": "output", "augment": True}, {"features": "layers", "beta": 0.0},
                                    {"features": "output", "augment": False}])
def test_no_feature_tap_without_a_feature_term(kwargs: dict[str, Any]) -> None:
    """features='output' or beta=0: layer outputs are never tapped, so a layer without batch axis is fine."""
    qm = _quant(_NoBatchAxis())
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    result = calibrate(qm, x, CalibrationConfig(epochs=2, learn_scale=False, seed=0, **kwargs), progress=False)
    assert len(result.history) == 2 and math.isfinite(result.final_loss)


def test_beta_zero_does_not_tap_a_layer_called_a_varying_number_of_times() -> None:
    qm = _quant(_Repeat())
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    result = calibrate(qm, x, CalibrationConfig(epochs=1, batch_size=3, beta=0.0, augment=False), progress=False)
    assert math.isfinite(result.final_loss)


def test_layer_called_a_varying_number_of_times_message() -> None:
    qm = _quant(_Repeat())
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MixqError) as excinfo:
        calibrate(qm, x, CalibrationConfig(epochs=1, batch_size=3, augment=False), progress=False)
    assert str(excinfo.value) == ("a layer is called a different number of times for different calibration "
                                  "batches (a data-dependent branch): calibrate with features='output'")


def test_teacher_targets_tap_over_other_layers_is_an_error() -> None:
    """A tap must cover exactly the model's quantized layers: an extra tapped module is not dropped silently."""
    qm, x = _conv_setup(4)
    layers = [qm.layers[k] for k in qm.layer_names] + [nn.Identity()]
    tap = cal._FeatureTap(layers, [*qm.layer_names, "extra"])
    try:
        with pytest.raises(ValueError) as excinfo:
            cal._teacher_targets(qm, x, 4, tap, CalibrationConfig())
        assert excinfo.type is ValueError
    finally:
        tap.close()


# ------------------------------------------------------------------------------------------------
# calibrate: inputs, progress bar, timing
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [torch.zeros(5), [[0.0, 1.0]], torch.zeros(0, 4)])
def test_calibration_data_shape_message(bad: Any) -> None:
    qm = _quant(_Branchy())
    with pytest.raises(MixqError) as excinfo:
        calibrate(qm, bad, _cfg(), progress=False)
    assert str(excinfo.value) == "calibration data must be a non-empty tensor (N, C, H, W)"


def test_calibration_data_dtype_and_model_messages() -> None:
    qm = _quant(_Branchy())
    with pytest.raises(MixqError) as excinfo:
        calibrate(qm, torch.zeros(4, 4, dtype=torch.uint8), _cfg(), progress=False)
    assert str(excinfo.value) == "calibration data must be float (normalised), got dtype torch.uint8"
    with pytest.raises(MixqError) as excinfo:
        calibrate(nn.Linear(4, 3), torch.zeros(4, 4), _cfg(), progress=False)  # type: ignore[arg-type]
    assert str(excinfo.value) == "calibrate needs a QuantModel, got Linear"


def test_empty_loss_message() -> None:
    with pytest.raises(MixqError) as excinfo:
        CalibrationConfig(alpha=0, beta=0)
    assert str(excinfo.value) == "calibration loss is empty: alpha is 0 and there is no feature term"


def _spy_progress(monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], io.StringIO]:
    calls: list[dict[str, Any]] = []
    buf = io.StringIO()

    def spy(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
        calls.append({"enabled": enabled, **kwargs})
        return tqdm(iterable, file=buf, disable=False, mininterval=0, **kwargs)

    monkeypatch.setattr(cal, "progress_bar", spy)
    return calls, buf


def test_progress_bar_is_on_by_default_and_shows_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, buf = _spy_progress(monkeypatch)
    qm = _quant(_Branchy())
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    result = calibrate(qm, x, _cfg(epochs=3, features="output"))
    assert calls == [{"enabled": True, "desc": "calibrate", "leave": False}]
    text = buf.getvalue()
    assert "calibrate: " in text
    for h in result.history:
        assert f"loss={h:.4g}]" in text


def test_progress_false_disables_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, _ = _spy_progress(monkeypatch)
    qm = _quant(_Branchy())
    calibrate(qm, torch.randn(4, 4), _cfg(features="output"), progress=False)
    assert calls == [{"enabled": False, "desc": "calibrate", "leave": False}]


def test_seconds_is_the_wall_time_of_the_call() -> None:
    qm = _quant(_Branchy())
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    result = calibrate(qm, x, _cfg(features="output"), progress=False)
    elapsed = time.perf_counter() - t0
    assert 0 < result.seconds <= elapsed


# -- holdout: early stopping on held-out calibration samples ---------------------------------------------------


def _holdout_setup():
    import torch

    from mixq.models import create_model
    from mixq.quant.model import QuantModel

    torch.manual_seed(0)
    model = create_model("resnet20-jpeg", pretrained=False)
    x = torch.randn(12, 3, 32, 32)
    qm = QuantModel(model, calib=x)
    qm.set_bits(3)
    return qm, x


def test_holdout_keeps_the_best_checked_weights_and_records_every_check():
    import torch

    from mixq.evoq.calibrate import CalibrationConfig, calibrate

    qm, x = _holdout_setup()
    teacher = copy.deepcopy(qm)  # the float model as it was: calibration moves qm's float weights
    cfg = CalibrationConfig(epochs=6, batch_size=4, lr=1e-3, holdout=4, check_every=2, augment=False, seed=1)
    r = calibrate(qm, x, cfg, progress=False)
    epochs = [e for e, _ in r.holdout_history]
    assert epochs == [-1, 0, 2, 4, 6]  # -1: the model as it came
    best_epoch, best = min(reversed(r.holdout_history), key=lambda h: h[1])  # ties go to the incoming model
    assert r.best_epoch == best_epoch
    # the kept model's held-out error is the best check's, measured independently here
    from mixq.evoq.calibrate import _split_holdout

    _, held = _split_holdout(x, cfg)
    with torch.no_grad():
        with teacher.float_mode():
            target = teacher(held)
        mse = float(torch.mean((qm(held) - target) ** 2))
    assert mse == pytest.approx(best, rel=1e-5)
    assert len(r.history) == 6


@pytest.mark.parametrize("learn_scale", [False, True])
def test_holdout_undoes_calibration_when_training_only_hurts(monkeypatch, learn_scale):
    import torch

    import mixq.evoq.calibrate as cal

    qm, x = _holdout_setup()
    before = {n: m.weight.detach().clone() for n, m in qm.layers.items()}

    def sabotage(s, calib, bs, targets, opt, gen, config):  # a "training" epoch that only adds noise
        with torch.no_grad():
            for m in s.qm.layers.values():
                m.weight.add_(0.5 * torch.randn_like(m.weight))
        return 1.0

    monkeypatch.setattr(cal, "_train_epoch", sabotage)
    with torch.no_grad():
        out_before = qm(x)
    cfg = cal.CalibrationConfig(epochs=4, batch_size=4, holdout=4, check_every=2, augment=False,
                                learn_scale=learn_scale)
    r = cal.calibrate(qm, x, cfg, progress=False)
    assert r.best_epoch == -1
    for n, m in qm.layers.items():
        assert torch.equal(m.weight, before[n])
        assert m.weight_quantizer.grids == {}  # learned grids dropped with the rest
    with torch.no_grad():
        assert torch.equal(qm(x), out_before)


def test_holdout_split_is_seeded_disjoint_and_complete():
    import torch

    from mixq.evoq.calibrate import CalibrationConfig, _split_holdout

    x = torch.arange(20.0).reshape(20, 1, 1, 1)
    a_train, a_held = _split_holdout(x, CalibrationConfig(holdout=5, seed=3))
    b_train, b_held = _split_holdout(x, CalibrationConfig(holdout=5, seed=3))
    assert torch.equal(a_held, b_held) and a_held.shape[0] == 5 and a_train.shape[0] == 15
    assert sorted(torch.cat([a_train, a_held]).flatten().tolist()) == list(range(20))
    assert _split_holdout(x, CalibrationConfig(holdout=0))[1] is None


@pytest.mark.parametrize("kwargs, match", [({"holdout": -1}, "holdout must be at least 0"),
                                           ({"check_every": 0}, "check_every must be at least 1"),
                                           ({"holdout": 1.5}, "holdout must be an integer")])
def test_holdout_settings_are_checked(kwargs, match):
    from mixq.evoq.calibrate import CalibrationConfig

    with pytest.raises(MixqError, match=match):
        CalibrationConfig(**kwargs)


def test_holdout_must_leave_training_samples():
    import torch

    from mixq.evoq.calibrate import CalibrationConfig, calibrate

    qm, _ = _holdout_setup()
    with pytest.raises(MixqError, match="4 held out of 4 calibration samples"):
        calibrate(qm, torch.randn(4, 3, 32, 32), CalibrationConfig(holdout=4), progress=False)


# -- relative learning rates ----------------------------------------------------------------------------------


def test_relative_lr_calibration_reduces_the_loss_and_its_step_follows_each_layers_size():
    """End to end on ResNet-20 (random weights, 3 bits, learned grids): the loss falls, and after one epoch
    every layer's weight moved by at most about lr x its RMS (Adam's first step is lr per element)."""
    qm, x = _holdout_setup()
    before = {n: m.weight.detach().clone() for n, m in qm.layers.items()}
    cfg = CalibrationConfig(epochs=1, batch_size=12, lr=1e-2, augment=False, lr_scaling="relative", seed=0)
    calibrate(qm, x, cfg, progress=False)
    for n, m in qm.layers.items():
        rms = float(before[n].pow(2).mean().sqrt())
        step = float((m.weight - before[n]).abs().max())
        assert 0 < step <= 1.01e-2 * rms, n
    qm2, _ = _holdout_setup()
    r = calibrate(qm2, x, CalibrationConfig(epochs=20, batch_size=12, lr=1e-2, augment=False,
                                            lr_scaling="relative"), progress=False)
    assert r.final_loss < 0.85 * r.initial_loss  # measured 0.76 (absolute lr 3e-4: 0.66)


def test_run_signature_leaves_out_absolute_lr_scaling_only():
    from mixq.evoq.pipeline import RunOptions, run_signature

    class _Task:
        def identity(self) -> dict:
            return {"model": "m"}

    from mixq.bits import Budget

    old = run_signature(_Task(), RunOptions(budget=Budget(avg_bits=3.0),
                                            calibration=CalibrationConfig(lr=3e-4, lr_scaling="absolute")))
    assert "lr_scaling" not in old["calibration"]  # the setting before the option existed: old runs resume
    rel = run_signature(_Task(), RunOptions(budget=Budget(avg_bits=3.0),
                                            calibration=CalibrationConfig(lr=2.5e-3, lr_scaling="relative")))
    assert rel["calibration"]["lr_scaling"] == "relative"
    default = run_signature(_Task(), RunOptions(budget=Budget(avg_bits=3.0)))
    assert default["calibration"]["lr_scaling"] == "step"


# -- refit: the holdout chooses, all samples train --------------------------------------------------------------


def test_refit_trains_all_samples_for_the_chosen_epochs_from_the_model_as_it_came():
    qm, x = _holdout_setup()
    twin = copy.deepcopy(qm)
    cfg = CalibrationConfig(epochs=6, batch_size=12, lr=1e-3, holdout=4, check_every=2, augment=False, seed=1,
                            refit=True)
    r = calibrate(qm, x, cfg, progress=False)
    choice = calibrate(copy.deepcopy(twin), x, CalibrationConfig(**{**cfg.__dict__, "refit": False}),
                       progress=False)
    assert (r.best_epoch, r.holdout_history) == (choice.best_epoch, choice.holdout_history)
    assert choice.best_epoch > 0  # this case trains (checked: the choice is not "as it came")
    assert r.refit_epochs == choice.best_epoch and len(r.history) == choice.best_epoch
    # the same as calibrating the incoming model on all 12 samples for that many epochs, no holdout
    direct = CalibrationConfig(**{**cfg.__dict__, "holdout": 0, "refit": False, "epochs": choice.best_epoch})
    calibrate(twin, x, direct, progress=False)
    for n in qm.layer_names:
        assert torch.equal(qm.layers[n].weight, twin.layers[n].weight), n
    with torch.no_grad():
        assert torch.equal(qm(x), twin(x))


def test_refit_leaves_the_model_as_it_came_when_no_check_beats_it(monkeypatch):
    qm, x = _holdout_setup()
    before = {n: m.weight.detach().clone() for n, m in qm.layers.items()}

    def sabotage(s, calib, bs, targets, opt, gen, config):
        with torch.no_grad():
            for m in s.qm.layers.values():
                m.weight.add_(0.5 * torch.randn_like(m.weight))
        return 1.0

    monkeypatch.setattr(cal, "_train_epoch", sabotage)
    r = calibrate(qm, x, CalibrationConfig(epochs=4, batch_size=4, holdout=4, check_every=2, augment=False,
                                           refit=True), progress=False)
    assert (r.best_epoch, r.refit_epochs) == (-1, 0)
    for n, m in qm.layers.items():
        assert torch.equal(m.weight, before[n])


def test_refit_needs_a_holdout():
    with pytest.raises(MixqError, match="refit needs held-out samples"):
        CalibrationConfig(refit=True)
