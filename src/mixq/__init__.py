"""mixq: mixed-precision post-training quantization (EvoQ, EMQ) for any PyTorch model."""

__version__ = "0.1.0"
