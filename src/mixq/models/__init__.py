"""Model zoo: a registry of named CIFAR-10 / ImageNet models and safe checkpoint loading."""

from mixq.models import zoo as _zoo  # noqa: F401  (registers the built-in models)
from mixq.models.loading import create_model, load_state_dict_file, load_user_model, sha256_file
from mixq.models.registry import ModelSpec, get_model_spec, list_models, register_model

__all__ = [
    "ModelSpec",
    "create_model",
    "get_model_spec",
    "list_models",
    "load_state_dict_file",
    "load_user_model",
    "register_model",
    "sha256_file",
]
