"""Exported models: a folder of ``model.safetensors`` (the state dict) and ``config.json`` (what model it is and
its configuration), written by :func:`save_pretrained` and read back by :func:`load_pretrained` without the
run folder, the checkpoint or the training code.

``config.json`` holds ``"format"``, ``"kind"`` (a key of :data:`MODEL_KINDS`), ``"model"`` (the model's
configuration as a plain dict, ``Config(**d)`` restores it), ``"inputs"`` (what ``forward`` takes) and
whatever the exporter adds about where the weights come from (task, variant, seed, step). A kind names a
fixed model class and its config class; a config of any other kind is refused, so a file from a stranger can
neither import a module of its choosing nor, since safetensors holds only tensors (no pickle), run code.

Known limits: the model classes of the image and video tasks live in ``tasks.<task>.model``, so loading
those kinds imports that package (not its training data).
"""
import importlib
import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from .checkpoint import atomic_write, jsonable

__all__ = ["ModelKind", "MODEL_KINDS", "PretrainedError", "FORMAT", "WEIGHTS_NAME", "CONFIG_NAME", "model_kind",
           "build_model", "load_weights", "save_pretrained", "read_config", "load_pretrained"]

FORMAT = "sa-mesh.pretrained/1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class ModelKind(NamedTuple):
    """A model class that can be exported: ``module.model(module.config(**d))`` rebuilds it, and ``inputs``
    says what its ``forward`` takes."""

    module: str
    model: str
    config: str
    inputs: str


MODEL_KINDS: dict[str, ModelKind] = {
    "slot_autoencoder": ModelKind("slots.vision", "SlotAutoencoder", "SlotAutoencoderConfig",
                                  "images (B, 3, R, R) float in [-1, 1] (slots.to_model_range of uint8 images)"),
    "video_slot_autoencoder": ModelKind("tasks.clevrer.model", "VideoSlotAutoencoder", "VideoModelConfig",
                                        "frames (B, T, 3, H, W) float in [-1, 1]"),
    "clevr_set_model": ModelKind("tasks.clevr.model", "ClevrSetModel", "ClevrModelConfig",
                                 "images (B, 3, S, S) float in [-1, 1]"),
    "random_objects_model": ModelKind("tasks.random_objects.model", "RandomObjectsModel", "ModelConfig",
                                      "input multisets (B, n, dim) float"),
}


class PretrainedError(ValueError):
    """An exported model that cannot be written or read: missing files, an unknown kind, a configuration the
    model class refuses, or tensors whose names or shapes do not fit the model."""


def model_kind(model: nn.Module) -> str:
    """The key of :data:`MODEL_KINDS` of ``model``'s class (PretrainedError for any other class)."""
    cls = type(model)
    for kind, k in MODEL_KINDS.items():
        if cls.__module__ == k.module and cls.__name__ == k.model:
            return kind
    raise PretrainedError(f"{cls.__module__}.{cls.__name__} is not a model that can be exported; the kinds are "
                          + ", ".join(f"{k.module}.{k.model}" for k in MODEL_KINDS.values()))


def build_model(kind: str, config: Mapping[str, Any], source: str = "config") -> nn.Module:
    """A freshly initialised model of ``kind`` with the configuration ``config`` (a plain dict, as stored).

    Raises:
        PretrainedError naming ``source`` for an unknown kind or a configuration the config class refuses.
    """
    if kind not in MODEL_KINDS:
        raise PretrainedError(f"{source}: unknown model kind {kind!r}; known kinds: {', '.join(MODEL_KINDS)}")
    if not isinstance(config, Mapping):
        raise PretrainedError(f"{source}: the model configuration must be a JSON object, got "
                              f"{type(config).__name__}")
    k = MODEL_KINDS[kind]
    module = importlib.import_module(k.module)
    try:
        cfg = getattr(module, k.config)(**config)
    except (TypeError, ValueError) as e:
        raise PretrainedError(f"{source}: not a valid {k.config} for a {kind}: {e}") from None
    return getattr(module, k.model)(cfg)


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``model`` after checking that they are exactly its state dict's names and shapes.

    Raises:
        PretrainedError naming ``source`` and the first missing, unexpected or misshapen tensors.
    """
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [f"{k} {tuple(tensors[k].shape)} (the model's is {tuple(v.shape)})" for k, v in expected.items()
              if k in tensors and tensors[k].shape != v.shape]
    for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            problems.append(f"{what}: {', '.join(names[:3])}{more}")
    if problems:
        raise PretrainedError(f"{source} does not fit the model ({type(model).__name__}): " + "; ".join(problems))
    model.load_state_dict(tensors)


def save_pretrained(model: nn.Module, folder, info: Mapping[str, Any] | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` for ``model`` (a class of
    :data:`MODEL_KINDS` with a ``config`` that has ``to_dict()``); ``info`` (JSON-serializable: task, variant,
    ...) is added to config.json. The folder is created; each file is written atomically. Returns the folder."""
    from safetensors.torch import save

    kind = model_kind(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors stores dense row-major tensors; channels-last weights are copied to that layout, and
    # loading copies them back into the model's own layout
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config = {**jsonable(dict(info or {})), "format": FORMAT, "kind": kind, "inputs": MODEL_KINDS[kind].inputs,
              "model": jsonable(model.config.to_dict())}
    data = save(tensors, metadata={"format": "pt"})
    atomic_write(folder / WEIGHTS_NAME, lambda f: f.write(data))
    atomic_write(folder / CONFIG_NAME, lambda f: f.write(json.dumps(config, indent=2) + "\n"), mode="w")
    return folder


def read_config(folder) -> dict:
    """The checked ``config.json`` of an exported model's folder (PretrainedError for a missing file, bad JSON
    or another format)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PretrainedError(f"{folder} is not a folder (an exported model is a folder of {WEIGHTS_NAME} and "
                              f"{CONFIG_NAME})")
    absent = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if not (folder / name).is_file()]
    if absent:
        raise PretrainedError(f"{folder} has no {' and no '.join(absent)}; export a run with "
                              "`python -m tasks.export RUN_DIR --to DIR`")
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise PretrainedError(f"{path} is not the config of an exported model (format {found!r}, expected "
                              f"{FORMAT!r})")
    for key in ("kind", "model"):
        if key not in config:
            raise PretrainedError(f"{path} has no {key!r}")
    return config


def load_pretrained(folder, device: str | torch.device = "cpu") -> nn.Module:
    """The model exported to ``folder`` (:func:`save_pretrained`), on ``device``, in eval mode.

    The weights are read with safetensors (tensors only: nothing in the file is executed). Slot attention
    draws its initial slots at random (``init="learned"``): seed torch for repeatable outputs.

    Raises:
        PretrainedError for a folder without the two files, a config that is not JSON or of an unknown kind or
        format, a configuration the model refuses, an unreadable weights file, or tensors whose names or
        shapes do not fit the model; ValueError for a CUDA device where CUDA is not available.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    folder = Path(folder)
    config = read_config(folder)
    model = build_model(config["kind"], config["model"], source=str(folder / CONFIG_NAME))
    path = folder / WEIGHTS_NAME
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise PretrainedError(f"{path} is not a readable safetensors file: {e}") from None
    load_weights(model, tensors, str(path))
    return model.to(device).eval()
