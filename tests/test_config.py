"""BitConfig: JSON round trip and each validation error."""

import json

import pytest

from mixq.bits import BitConfig, Budget
from mixq.errors import MixqError

LAYERS = ["conv1", "layer1.0.conv1", "linear"]


def test_round_trip(tmp_path):
    cfg = BitConfig({"conv1": 8, "layer1.0.conv1": 3, "linear": 32}, acts={"linear": 6})
    path = tmp_path / "c.json"
    cfg.save(path)
    assert json.loads(path.read_text())["conv1"] == 8
    back = BitConfig.load(path)
    assert back == cfg and hash(back) == hash(cfg)
    assert list(back.weights) == list(cfg.weights)
    assert back.acts["linear"] == 6


def test_plain_mapping_is_the_file_format(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({n: 4 for n in LAYERS}))
    assert BitConfig.load(path) == BitConfig.uniform(LAYERS, 4)


@pytest.mark.parametrize("bits", [1, 9, 16, -3, "4", 4.5, True])
def test_bits_out_of_range(bits):
    with pytest.raises(MixqError, match="conv1"):
        BitConfig({"conv1": bits})


def test_unknown_and_missing_layers():
    with pytest.raises(MixqError, match="unknown layer.*nope"):
        BitConfig({"conv1": 4, "layer1.0.conv1": 4, "linear": 4, "nope": 4}).validate(LAYERS)
    with pytest.raises(MixqError, match="lacks layer.*linear"):
        BitConfig({"conv1": 4, "layer1.0.conv1": 4}).validate(LAYERS)
    BitConfig.uniform(LAYERS, 2).validate(LAYERS)


def test_bad_files(tmp_path):
    with pytest.raises(MixqError, match="cannot read"):
        BitConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MixqError, match="not valid JSON"):
        BitConfig.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(MixqError, match="expected a JSON object"):
        BitConfig.load(bad)
    bad.write_text('{"conv1": {"w": 3}}')
    with pytest.raises(MixqError, match="conv1"):
        BitConfig.load(bad)


def test_budget():
    assert Budget(avg_bits=3).max_bit_params(1000) == 3000
    assert Budget(avg_bits=3, size_mb=1e-6).max_bit_params(1000) == pytest.approx(1e-6 * 8 * 2**20)
    with pytest.raises(MixqError):
        Budget()
    with pytest.raises(MixqError):
        Budget(avg_bits=-1)
