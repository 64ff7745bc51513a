"""Tests of ``slots.pretrained``: every exportable kind of model written and read back gives the same outputs;
folders, configs and weights files that do not fit are refused with the problem named; a pickle is never run."""
import json
import pickle

import pytest
import torch

from slots import OTConfig, SlotAutoencoder, image_autoencoder_config, load_pretrained, save_pretrained
from slots.pretrained import CONFIG_NAME, MODEL_KINDS, WEIGHTS_NAME, PretrainedError, model_kind

pytestmark = pytest.mark.usefixtures("one_thread")


def _autoencoder():
    return SlotAutoencoder(image_autoencoder_config(3, "sa-mesh", "l2", resolution=8, channels=8, slot_dim=16,
                                                    mlp_hidden=16, ot=OTConfig(normalize_plan=False)))


def _video():
    from tasks.clevrer.model import VideoModelConfig, VideoSlotAutoencoder

    auto = image_autoencoder_config(3, "sa", "cosine", resolution=8, channels=8, slot_dim=16, mlp_hidden=16)
    return VideoSlotAutoencoder(VideoModelConfig(auto, transition="learned-noise"))


def _clevr():
    from tasks.clevr.model import ClevrModelConfig, ClevrSetModel

    return ClevrSetModel(ClevrModelConfig.of("sa-sh", image_size=16))


def _random_objects():
    from tasks.random_objects.model import ModelConfig, RandomObjectsModel

    return RandomObjectsModel(ModelConfig(variant="sa-mesh", n_slots=3, dim=8, head="linear"))


# kind -> (model, an input)
MODELS = {
    "slot_autoencoder": (_autoencoder, lambda: torch.rand(2, 3, 8, 8) * 2 - 1),
    "video_slot_autoencoder": (_video, lambda: torch.rand(2, 2, 3, 8, 8) * 2 - 1),
    "clevr_set_model": (_clevr, lambda: torch.rand(2, 3, 16, 16) * 2 - 1),
    "random_objects_model": (_random_objects, lambda: torch.randn(2, 7, 8)),
}


def _outputs(model, x, seed=3):
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, tuple) else (out,)


def _perturbed(make):
    """A model of ``make`` whose parameters are all moved away from their initial values."""
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_the_table_covers_the_test_models():
    assert set(MODELS) == set(MODEL_KINDS)


@pytest.mark.parametrize("kind", list(MODELS))
def test_saved_and_loaded_model_gives_the_same_outputs(kind, tmp_path):
    make, data = MODELS[kind]
    model = _perturbed(make)
    assert model_kind(model) == kind
    save_pretrained(model, tmp_path / "export", {"task": "test"})
    torch.manual_seed(1)  # another model's initialization: the loaded one must not depend on it
    loaded = load_pretrained(tmp_path / "export")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    x = data()
    for a, b in zip(_outputs(model, x), _outputs(loaded, x)):
        assert torch.equal(a, b)
    config = json.loads((tmp_path / "export" / CONFIG_NAME).read_text())
    assert config["kind"] == kind and config["task"] == "test" and config["inputs"] == MODEL_KINDS[kind].inputs


def test_channels_last_weights_come_back_in_the_models_layout(tmp_path):
    model = _perturbed(_autoencoder)
    conv = model.encoder.convs[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    assert torch.equal(loaded.encoder.convs[0].weight, conv)
    assert loaded.encoder.convs[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_not_an_exportable_model():
    with pytest.raises(PretrainedError, match="torch.nn.modules.linear.Linear is not a model that can be exported"):
        save_pretrained(torch.nn.Linear(2, 2), "unused")


@pytest.fixture
def export(tmp_path):
    folder = tmp_path / "export"
    save_pretrained(_perturbed(_random_objects), folder)
    return folder


def _edit_config(folder, change):
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update(kind="unet"), "unknown model kind 'unet'; known kinds: slot_autoencoder"),
    (lambda c: c.update(format="other/1"), "format 'other/1', expected 'sa-mesh.pretrained/1'"),
    (lambda c: c.pop("model"), "has no 'model'"),
    (lambda c: c["model"].update(dim=0), "not a valid ModelConfig for a random_objects_model"),
    (lambda c: c["model"].update(depth=4), "unexpected keyword argument 'depth'"),
    (lambda c: c["model"].update(dim=16), r"wrong shape: slot_attention.slots_mu \(1, 1, 8\)"),
    (lambda c: c["model"].update(head="none"), "unexpected: head.bias, head.weight"),
])
def test_configs_that_do_not_fit_are_refused(export, change, match):
    _edit_config(export, change)
    with pytest.raises(PretrainedError, match=match):
        load_pretrained(export)


def test_tensors_that_do_not_fit_are_refused(export):
    from safetensors.torch import load_file, save_file

    tensors = load_file(export / WEIGHTS_NAME)
    tensors["extra"] = torch.zeros(1)
    del tensors["head.bias"]
    save_file(tensors, export / WEIGHTS_NAME)
    with pytest.raises(PretrainedError, match="missing: head.bias; unexpected: extra"):
        load_pretrained(export)


def test_missing_files_and_folders_are_named(export, tmp_path):
    with pytest.raises(PretrainedError, match="is not a folder"):
        load_pretrained(tmp_path / "nothing")
    (export / WEIGHTS_NAME).unlink()
    with pytest.raises(PretrainedError, match=f"has no {WEIGHTS_NAME}"):
        load_pretrained(export)
    (export / CONFIG_NAME).unlink()
    with pytest.raises(PretrainedError, match=f"has no {WEIGHTS_NAME} and no {CONFIG_NAME}"):
        load_pretrained(export)


def test_a_config_that_is_not_json(export):
    (export / CONFIG_NAME).write_text("{kind: ")
    with pytest.raises(PretrainedError, match="cannot be read as JSON"):
        load_pretrained(export)


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_in_place_of_the_weights_is_refused_and_never_run(export, tmp_path):
    marker = tmp_path / "code_ran"
    (export / WEIGHTS_NAME).write_bytes(pickle.dumps({"head.weight": _Payload(marker)}))
    torch.save({"head.weight": _Payload(marker)}, tmp_path / "torch_pickle.pt")
    for payload in (export / WEIGHTS_NAME).read_bytes(), (tmp_path / "torch_pickle.pt").read_bytes():
        (export / WEIGHTS_NAME).write_bytes(payload)
        with pytest.raises(PretrainedError, match="is not a readable safetensors file"):
            load_pretrained(export)
    assert not marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_cuda_where_there_is_none(export):
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_pretrained(export, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loaded_on_cuda_gives_the_cpu_outputs(tmp_path):
    torch.manual_seed(0)
    model = SlotAutoencoder(image_autoencoder_config(3, "sa-mesh", "l2", resolution=8, channels=8, slot_dim=16,
                                                     mlp_hidden=16, bf16=False)).eval()
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path, device="cuda")
    assert next(loaded.parameters()).device.type == "cuda" and not loaded.training
    x, slots = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 16)  # the same initial slots on both devices
    with torch.no_grad():
        expected, got = model(x, slots), loaded(x.cuda(), slots.cuda())
    for a, b in zip(expected, got):  # float32 on both; the OT kernels differ (C++ / Triton) in rounding only
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-3)
