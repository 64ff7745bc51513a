"""Tests of slots.vision: the position grid and embedding, encoder and decoder shapes (the App. F.3 and the
CLEVR-style strided variants), the factored first decoder layer against the literal broadcast (values and
float64 gradients), bfloat16 autocast against float32, alpha masks, gradient flow and config checks."""
import json

import pytest
import torch
import torch.nn.functional as F

from slots import (CNNEncoder, DecoderConfig, EncoderConfig, OTConfig, SlotAttentionConfig, SlotAutoencoder,
                   SlotAutoencoderConfig, SoftPositionEmbed, SpatialBroadcastDecoder, build_grid,
                   image_autoencoder_config, native_bf16, to_model_range)


def small_config(variant="sa-mesh", cost="l2", **kw):
    return image_autoencoder_config(4, variant, cost, resolution=12, channels=6, slot_dim=10, mlp_hidden=16, **kw)


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: see conftest.one_thread


def test_build_grid_values():
    g = build_grid((3, 5))
    assert g.shape == (3, 5, 4)
    torch.testing.assert_close(g[:, 0, 0], torch.tensor([0.0, 0.5, 1.0]))  # y runs down the rows
    torch.testing.assert_close(g[0, :, 1], torch.linspace(0, 1, 5))  # x runs along the columns
    torch.testing.assert_close(g[..., 2:], 1 - g[..., :2])
    assert (g[:, :, 0] == g[:, :1, 0]).all() and (g[:, :, 1] == g[:1, :, 1]).all()


def test_soft_position_embed_adds_linear_map_of_grid():
    torch.manual_seed(0)
    pe = SoftPositionEmbed(7, (3, 4))
    x = torch.randn(2, 7, 3, 4)
    expected = x + (build_grid((3, 4)) @ pe.dense.weight.T + pe.dense.bias).permute(2, 0, 1)
    torch.testing.assert_close(pe(x), expected)
    with pytest.raises(ValueError, match="built for"):
        pe(torch.randn(2, 7, 4, 4))


@pytest.mark.parametrize("channels_last", [False, True])
def test_encoder_shapes_paper_and_clevr(channels_last):
    enc = CNNEncoder(EncoderConfig(), channels_last=channels_last)  # App. F.3: 4 x 5x5, stride 1, 32 channels
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 64 * 64, 32)
    clevr = EncoderConfig(channels=(64,) * 4, strides=(1, 2, 2, 1), resolution=(128, 128), out_dim=64)
    assert clevr.feature_resolution == (32, 32)
    assert CNNEncoder(clevr, channels_last=channels_last)(torch.randn(1, 3, 128, 128)).shape == (1, 1024, 64)


def test_encoder_features_are_row_major_over_the_grid():
    # With identity-like convolutions, feature row i * w + j must come from pixel (i, j).
    enc = CNNEncoder(EncoderConfig(channels=(3,), strides=(1,), kernel_size=1, resolution=(4, 5), out_dim=3))
    with torch.no_grad():
        enc.convs[0].weight.copy_(torch.eye(3)[:, :, None, None])
        enc.convs[0].bias.zero_()
        enc.pos.dense.weight.zero_()
        enc.pos.dense.bias.zero_()
    captured = {}
    enc.norm.register_forward_hook(lambda m, inp, out: captured.setdefault("x", inp[0]))
    img = torch.rand(1, 3, 4, 5)
    enc(img)
    torch.testing.assert_close(captured["x"][0, 2 * 5 + 3], img[0, :, 2, 3])


def test_encoder_rejects_bad_images():
    enc = CNNEncoder(EncoderConfig(resolution=(16, 16)))
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        enc(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        enc(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def _decoder_pair(config: DecoderConfig, channels_last: bool, seed=0):
    torch.manual_seed(seed)
    plain = SpatialBroadcastDecoder(config).double()
    fast = SpatialBroadcastDecoder(config, channels_last=channels_last, factored_broadcast=True).double()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


DECODERS = {
    "paper": DecoderConfig(slot_dim=5, channels=(4, 4), broadcast=(7, 9)),
    "strided": DecoderConfig(slot_dim=5, channels=(4, 3), strides=(2, 2), broadcast=(3, 4)),
    "strided first only": DecoderConfig(slot_dim=5, channels=(4, 3), strides=(2, 1), kernel_size=3, broadcast=(4, 4)),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_factored_broadcast_equals_literal_broadcast(name, channels_last):
    cfg = DECODERS[name]
    plain, fast = _decoder_pair(cfg, channels_last)
    z = torch.randn(6, 5, dtype=torch.float64)
    rgb, alpha = plain(z)
    assert rgb.shape == (6, 3) + cfg.resolution and alpha.shape == (6,) + cfg.resolution
    rgb2, alpha2 = fast(z)
    torch.testing.assert_close(rgb2, rgb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alpha2, alpha, rtol=1e-12, atol=1e-12)
    # gradients of the slots and of every parameter agree as well
    g_rgb, g_alpha = torch.randn_like(rgb), torch.randn_like(alpha)
    grads = []
    for dec in (plain, fast):
        zz = z.clone().requires_grad_()
        r, a = dec(zz)
        params = [zz] + list(dec.parameters())
        grads.append(torch.autograd.grad((r * g_rgb).sum() + (a * g_alpha).sum(), params))
    for (pname, _), g1, g2 in zip([("z", None)] + list(plain.named_parameters()), *grads):
        torch.testing.assert_close(g2, g1, rtol=1e-10, atol=1e-12, msg=pname)


def test_factored_decoder_gradcheck_float64():
    cfg = DecoderConfig(slot_dim=3, channels=(2,), strides=(2,), kernel_size=3, out_kernel_size=1, broadcast=(2, 3))
    _, fast = _decoder_pair(cfg, channels_last=True)
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = fast.convs[0].weight.detach().clone().requires_grad_()

    def run(z_, w_):
        rgb, alpha = torch.func.functional_call(fast, {"convs.0.weight": w_}, (z_,))
        return rgb, alpha

    assert torch.autograd.gradcheck(run, (z, w))


def test_bf16_autocast_close_to_float32_and_outputs_float32():
    torch.manual_seed(0)
    ref = SlotAutoencoder(small_config("sa", "dot", bf16=False, channels_last=False, factored_broadcast=False))
    fast = SlotAutoencoder(small_config("sa", "dot"))
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(3, 3, 12, 12) * 2 - 1
    torch.manual_seed(1)
    out_ref = ref(x)
    torch.manual_seed(1)
    out = fast(x)
    for name in out._fields:
        assert getattr(out, name).dtype == torch.float32, name
    # bfloat16 has an 8-bit mantissa: a few 1e-2 of the outputs' scale, not more
    scale = out_ref.recon.abs().max()
    assert (out.recon - out_ref.recon).abs().max() < 0.05 * scale
    assert (out.masks - out_ref.masks).abs().max() < 0.05
    assert (out.recon - out_ref.recon).abs().max() > 0  # bf16 did run


@pytest.mark.parametrize("variant,cost", [("sa", "dot"), ("sa-sh", "l2"), ("sa-mesh", "l2")])
def test_autoencoder_outputs_masks_and_gradients(variant, cost):
    torch.manual_seed(0)
    model = SlotAutoencoder(small_config(variant, cost, ot=OTConfig(normalize_plan=False)))
    x = torch.rand(2, 3, 12, 12) * 2 - 1
    out = model(x)
    assert out.recon.shape == (2, 3, 12, 12) and out.rgb.shape == (2, 4, 3, 12, 12)
    assert out.masks.shape == (2, 4, 12, 12) and out.slots.shape == (2, 4, 10) and out.attn.shape == (2, 4, 12, 12)
    torch.testing.assert_close(out.masks.sum(1), torch.ones(2, 12, 12))  # alpha masks sum to 1 over slots
    assert (out.masks >= 0).all()
    torch.testing.assert_close(out.recon, (out.rgb * out.masks[:, :, None]).sum(1))
    if variant == "sa":
        torch.testing.assert_close(out.attn.sum(1), torch.ones(2, 12, 12))  # each input's softmax over slots
    else:
        torch.testing.assert_close(out.attn.sum((1, 2, 3)), torch.full((2,), 4.0), rtol=1e-4, atol=1e-4)
    loss = model.loss(x)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_slots_passed_in_are_used():
    torch.manual_seed(0)
    model = SlotAutoencoder(small_config("sa", "dot"))
    x = torch.rand(2, 3, 12, 12) * 2 - 1
    s0 = torch.randn(2, 4, 10)
    a, b = model(x, slots=s0), model(x, slots=s0)
    torch.testing.assert_close(a.recon, b.recon)  # "sa" is deterministic given the slots
    assert (model(x, slots=s0 + 1).recon - a.recon).abs().max() > 0


def test_config_round_trip_and_checks():
    cfg = small_config(ot=OTConfig(normalize_plan=False))
    back = SlotAutoencoderConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    sa = SlotAttentionConfig(n_slots=3, dim=8, input_dim=32)
    with pytest.raises(ValueError, match="decoder.slot_dim"):
        SlotAutoencoderConfig(EncoderConfig(), DecoderConfig(slot_dim=64), sa)
    with pytest.raises(ValueError, match="input_dim"):
        SlotAutoencoderConfig(EncoderConfig(out_dim=16), DecoderConfig(slot_dim=8), sa)
    with pytest.raises(ValueError, match="resolution|makes"):
        SlotAutoencoderConfig(EncoderConfig(), DecoderConfig(slot_dim=8, broadcast=(32, 32)), sa)
    with pytest.raises(ValueError, match="odd"):
        EncoderConfig(kernel_size=4)
    with pytest.raises(ValueError, match="strides"):
        DecoderConfig(strides=(1, 1))
    with pytest.raises(ValueError, match="bool"):
        SlotAutoencoderConfig(EncoderConfig(), DecoderConfig(slot_dim=8), sa, bf16=1)


def test_to_model_range():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8)
    torch.testing.assert_close(to_model_range(x), torch.tensor([-1.0, 1.0, -0.6]))
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(x.float())


def test_reconstruction_loss_is_mse():
    torch.manual_seed(0)
    model = SlotAutoencoder(small_config("sa", "dot", bf16=False))
    x = torch.rand(2, 3, 12, 12) * 2 - 1
    torch.manual_seed(3)
    loss = model.loss(x)
    torch.manual_seed(3)
    torch.testing.assert_close(loss, F.mse_loss(model(x).recon, x))


def test_native_bf16_follows_the_hardware_of_the_default_device(monkeypatch):
    flags = {"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}
    for name in flags:
        monkeypatch.setattr(torch.cpu, name, lambda name=name: flags[name], raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert native_bf16() is False and native_bf16("cpu") is False and native_bf16("cuda") is False
    flags["_is_amx_tile_supported"] = True
    assert native_bf16() is True and native_bf16("cpu") is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert native_bf16() is False and native_bf16("cpu") is True  # None means CUDA when it is available
