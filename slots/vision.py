"""Image encoder, soft position embedding, spatial broadcast decoder, and the object-discovery
autoencoder built from them and :class:`slots.SlotAttention` (Locatello et al., 2020; Sec. 5.3, App. F.3).

Encoder (:class:`CNNEncoder`): image (B, C_in, H, W) -> convolutions k x k with "same" padding, ReLU after
each (``channels``, ``strides``) -> + soft position embedding -> flatten to (B, h * w, C) -> LayerNorm ->
Linear, ReLU, Linear -> features (B, h * w, out_dim). The App. F.3 Multi-dSprites encoder is 4 convolutions
5 x 5, stride 1, 32 channels (64 for ClevrTex); the CLEVR property-prediction encoder (App. F.2) is
4 x 5 x 5, 64 channels, strides (1, 2, 2, 1) on 128 x 128 images (32 x 32 features).

Soft position embedding (:class:`SoftPositionEmbed`): the 4-channel grid (y, x, 1 - y, 1 - x), with y and x
evenly spaced over [0, 1] from the first to the last row / column (``build_grid``), mapped by a learned
Linear(4, C) and added to a (B, C, h, w) feature map.

Spatial broadcast decoder (:class:`SpatialBroadcastDecoder`, Watters et al., 2019): every slot z (dim D) is
tiled over a (h0, w0) grid, the position embedding is added, then convolutions with ReLU (stride 1: Conv2d
with "same" padding; stride s > 1: ConvTranspose2d that multiplies the size by s) and a last convolution to
C_out + 1 channels: RGB and an alpha logit. App. F.3: broadcast at 64 x 64, 3 convolutions 5 x 5 with 32
channels (64 for ClevrTex) and a 3 x 3 one to RGB + alpha.

Autoencoder (:class:`SlotAutoencoder`): features -> slot attention -> slots (B, K, D) -> decoder ->
rgb_k (B, K, 3, H, W), alpha logits (B, K, H, W); masks m_k = softmax over the K slots of the alpha logits;
reconstruction x_hat = sum_k m_k * rgb_k; the loss is the mean squared error to the input image, whose
pixels are in [-1, 1] (``to_model_range``). The masks are the per-slot segmentation scored by FG-ARI /
FG-mIoU (``slots.fg_ari``, ``slots.fg_miou``).

Speed options of :class:`SlotAutoencoderConfig` (each keeps the maths; all False is the plain float32 eager
model, which the tests and benchmarks use as the reference):

* ``factored_broadcast``: the decoder's first convolution of a tiled slot plus the position embedding is
  linear in the slot: conv(tile(z) + P) = sum_c z_c conv(tile(e_c)) + conv(P), where conv(P) includes the
  bias. The basis responses M (C_in, h1, w1, C_out) are one depthwise convolution of an all-ones image with
  the weights (``_basis_response``), so the layer becomes one (B K, D) x (D, h1 w1 C_out) matrix product
  instead of a convolution over B K tiled images (k^2 times fewer multiply-adds; zero padding at the
  borders is accounted for exactly because M is computed with the same padding).
* ``bf16``: the convolution stacks of encoder and decoder run under ``torch.autocast`` in bfloat16 (on CPU
  it needs AVX-512 BF16 or AMX to be fast: ``native_bf16``); everything else, slot attention and the OT
  kernels included, stays in the input's dtype (float32).
* ``channels_last``: convolution weights and activations in NHWC memory order (oneDNN's fast layout on the
  CPU); the flattening of encoder features to (B, h * w, C) is then a view.

Known limits: images must have the configured resolution (the position grids are built for it); the
decoder's first layer is factored only from the tiled input, so a decoder whose first layer is not linear in
its input cannot use it (all layers here are).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels import check_int

from .attention import SlotAttention, SlotAttentionConfig

__all__ = [
    "EncoderConfig", "DecoderConfig", "SlotAutoencoderConfig", "CNNEncoder", "SoftPositionEmbed",
    "SpatialBroadcastDecoder", "SlotAutoencoder", "AutoencoderOutput", "build_grid", "to_model_range",
    "image_autoencoder_config", "native_bf16",
]


def _int_tuple(name: str, value, length: int | None = None) -> tuple[int, ...]:
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}") from None
    if not out or (length is not None and len(out) != length):
        want = f"{length} integers" if length is not None else "at least one integer"
        raise ValueError(f"{name} must have {want}, got {value!r}")
    for v in out:
        check_int(v, name, 1)
    return out


def _layers(owner: str, channels, strides) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Checked (channels, strides) tuples of a convolution stack; strides None is all 1."""
    channels = _int_tuple(f"{owner}.channels", channels)
    strides = (1,) * len(channels) if strides is None else strides
    return channels, _int_tuple(f"{owner}.strides", strides, len(channels))


def _check_kernel(name: str, k) -> None:
    check_int(k, name, 1)
    if k % 2 == 0:
        raise ValueError(f"{name} must be odd (for 'same' padding), got {k}")


def build_grid(resolution: tuple[int, int]) -> torch.Tensor:
    """The position grid of the soft position embedding.

    Args:
        resolution: (h, w).

    Returns:
        (h, w, 4) float32: channel 0 the row coordinate y, 1 the column coordinate x (each evenly spaced
        over [0, 1], first to last), 2 and 3 are 1 - y and 1 - x.
    """
    h, w = _int_tuple("resolution", resolution, 2)
    ys, xs = torch.meshgrid(torch.linspace(0.0, 1.0, h), torch.linspace(0.0, 1.0, w), indexing="ij")
    grid = torch.stack([ys, xs], dim=-1)  # (h, w, 2)
    return torch.cat([grid, 1.0 - grid], dim=-1)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) in [0, 255] -> float32 in [-1, 1] (x / 255 * 2 - 1)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor, got {got}")
    return images.float().mul_(2.0 / 255.0).sub_(1.0)


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear map of :func:`build_grid` to a feature map.

    Args:
        dim: channels C of the feature map. resolution: its (h, w).
    """

    def __init__(self, dim: int, resolution: tuple[int, int]):
        super().__init__()
        check_int(dim, "dim", 1)
        self.resolution = _int_tuple("resolution", resolution, 2)
        self.dense = nn.Linear(4, dim)
        self.register_buffer("grid", build_grid(self.resolution), persistent=False)

    def embedding(self) -> torch.Tensor:
        """(1, C, h, w) the embedding added to every feature map."""
        return self.dense(self.grid.to(self.dense.weight.dtype)).permute(2, 0, 1)[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) -> x + embedding, same shape."""
        if tuple(x.shape[-2:]) != self.resolution:
            raise ValueError(f"feature map is {tuple(x.shape[-2:])}, the position embedding was built for "
                             f"{self.resolution}")
        return x + self.embedding()


# ---------------------------------------------------------------------------------------------------
# Configurations


@dataclass
class EncoderConfig:
    """Options of :class:`CNNEncoder`.

    Attributes:
        channels: output channels of each convolution (their number is the number of layers).
        strides: stride of each convolution (same length as ``channels``); None is all 1.
        kernel_size: odd kernel size of every convolution ("same" padding k // 2).
        in_channels: image channels.
        resolution: input image (H, W).
        out_dim: feature size after the MLP (slot attention's ``input_dim``).
        mlp_hidden: hidden width of the MLP; None is ``channels[-1]``.
    """

    channels: tuple[int, ...] = (32, 32, 32, 32)
    strides: tuple[int, ...] | None = None
    kernel_size: int = 5
    in_channels: int = 3
    resolution: tuple[int, int] = (64, 64)
    out_dim: int = 32
    mlp_hidden: int | None = None

    def __post_init__(self):
        self.channels, self.strides = _layers("EncoderConfig", self.channels, self.strides)
        self.resolution = _int_tuple("EncoderConfig.resolution", self.resolution, 2)
        _check_kernel("EncoderConfig.kernel_size", self.kernel_size)
        check_int(self.in_channels, "EncoderConfig.in_channels", 1)
        check_int(self.out_dim, "EncoderConfig.out_dim", 1)
        if self.mlp_hidden is None:
            self.mlp_hidden = self.channels[-1]
        check_int(self.mlp_hidden, "EncoderConfig.mlp_hidden", 1)

    @property
    def feature_resolution(self) -> tuple[int, int]:
        """(h, w) of the feature grid: each stride-s layer maps a side n to ceil(n / s)."""
        h, w = self.resolution
        for s in self.strides:
            h, w = -(-h // s), -(-w // s)
        return h, w


@dataclass
class DecoderConfig:
    """Options of :class:`SpatialBroadcastDecoder`.

    Attributes:
        slot_dim: size D of a slot.
        channels: output channels of each hidden convolution.
        strides: 1 (Conv2d, "same" padding) or s > 1 (ConvTranspose2d, size times s) per hidden layer; None
            is all 1.
        kernel_size: odd kernel of the hidden convolutions. out_kernel_size: odd kernel of the last one.
        broadcast: (h0, w0) grid each slot is tiled over.
        out_channels: image channels (the last layer has out_channels + 1: RGB and an alpha logit).
    """

    slot_dim: int = 64
    channels: tuple[int, ...] = (32, 32, 32)
    strides: tuple[int, ...] | None = None
    kernel_size: int = 5
    out_kernel_size: int = 3
    broadcast: tuple[int, int] = (64, 64)
    out_channels: int = 3

    def __post_init__(self):
        check_int(self.slot_dim, "DecoderConfig.slot_dim", 1)
        self.channels, self.strides = _layers("DecoderConfig", self.channels, self.strides)
        self.broadcast = _int_tuple("DecoderConfig.broadcast", self.broadcast, 2)
        _check_kernel("DecoderConfig.kernel_size", self.kernel_size)
        _check_kernel("DecoderConfig.out_kernel_size", self.out_kernel_size)
        check_int(self.out_channels, "DecoderConfig.out_channels", 1)

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) of the decoded images: the broadcast grid times the product of the strides."""
        f = math.prod(self.strides)
        return self.broadcast[0] * f, self.broadcast[1] * f


@dataclass
class SlotAutoencoderConfig:
    """Options of :class:`SlotAutoencoder`: its three parts and the speed options (module docstring).

    ``slot_attention.input_dim`` must equal ``encoder.out_dim``, ``decoder.slot_dim`` must equal
    ``slot_attention.dim``, and the decoder must produce images of the encoder's resolution and channels.
    Dicts are accepted for the three parts (a config read back from JSON).
    """

    encoder: EncoderConfig
    decoder: DecoderConfig
    slot_attention: SlotAttentionConfig
    bf16: bool = True
    channels_last: bool = True
    factored_broadcast: bool = True

    def __post_init__(self):
        for name, cls in (("encoder", EncoderConfig), ("decoder", DecoderConfig),
                          ("slot_attention", SlotAttentionConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                value = cls(**value)
                setattr(self, name, value)
            if not isinstance(value, cls):
                raise ValueError(f"{name} must be a {cls.__name__} or a dict of its fields, got "
                                 f"{type(value).__name__}")
        for name in ("bf16", "channels_last", "factored_broadcast"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        enc, dec, sa = self.encoder, self.decoder, self.slot_attention
        if sa.input_dim != enc.out_dim:
            raise ValueError(f"slot_attention.input_dim ({sa.input_dim}) must equal encoder.out_dim ({enc.out_dim})")
        if dec.slot_dim != sa.dim:
            raise ValueError(f"decoder.slot_dim ({dec.slot_dim}) must equal slot_attention.dim ({sa.dim})")
        if dec.resolution != enc.resolution:
            raise ValueError(f"the decoder makes {dec.resolution} images, the encoder reads {enc.resolution}")
        if dec.out_channels != enc.in_channels:
            raise ValueError(f"decoder.out_channels ({dec.out_channels}) must equal encoder.in_channels "
                             f"({enc.in_channels})")

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-serializable); ``SlotAutoencoderConfig(**d)`` restores it."""
        return asdict(self)


def image_autoencoder_config(n_slots: int, variant: str, cost: str, *, resolution: int = 64, channels: int = 32,
                             slot_dim: int = 64, mlp_hidden: int = 128, n_iters: int = 3, init: str = "learned",
                             ot=None, bf16: bool = True, channels_last: bool = True,
                             factored_broadcast: bool = True) -> SlotAutoencoderConfig:
    """The object-discovery architecture of App. F.3 at a square ``resolution``.

    Multi-dSprites: ``channels=32, slot_dim=64, mlp_hidden=128``; ClevrTex: ``64, 128, 256``. Encoder: 4
    convolutions 5 x 5, stride 1, ``channels`` wide, MLP to ``channels``; decoder: broadcast at the full
    resolution, 3 convolutions 5 x 5 and a 3 x 3 one. ``ot`` is an ``slots.OTConfig`` (or None: its defaults).
    """
    check_int(resolution, "resolution", 4)
    sa_kw = {} if ot is None else {"ot": ot}
    return SlotAutoencoderConfig(
        encoder=EncoderConfig(channels=(channels,) * 4, resolution=(resolution, resolution), out_dim=channels),
        decoder=DecoderConfig(slot_dim=slot_dim, channels=(channels,) * 3, broadcast=(resolution, resolution)),
        slot_attention=SlotAttentionConfig(n_slots=n_slots, dim=slot_dim, input_dim=channels, variant=variant,
                                           cost=cost, n_iters=n_iters, mlp_hidden=mlp_hidden, init=init, **sa_kw),
        bf16=bf16, channels_last=channels_last, factored_broadcast=factored_broadcast)


# ---------------------------------------------------------------------------------------------------
# Modules


def native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether bfloat16 convolutions are fast on ``device``: CUDA with bfloat16 support, or a CPU with
    AVX-512 BF16 or AMX (elsewhere bfloat16 is emulated and slower than float32). None: the device training
    runs on by default (CUDA when available, else the CPU)."""
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                 "_is_amx_tile_supported"))


def _autocast(x: torch.Tensor, enabled: bool):
    """bfloat16 autocast on x's device type when ``enabled`` (float64 inputs are left alone by autocast)."""
    return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


class CNNEncoder(nn.Module):
    """Convolutions + soft position embedding + LayerNorm + MLP (module docstring).

    Args:
        config: :class:`EncoderConfig`. bf16, channels_last: the speed options of
            :class:`SlotAutoencoderConfig`.
    """

    def __init__(self, config: EncoderConfig, bf16: bool = False, channels_last: bool = False):
        super().__init__()
        if not isinstance(config, EncoderConfig):
            raise ValueError(f"config must be an EncoderConfig, got {type(config).__name__}")
        self.config, self.bf16, self.channels_last = config, bf16, channels_last
        layers, c_in, k = [], config.in_channels, config.kernel_size
        for c_out, s in zip(config.channels, config.strides):
            layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2), nn.ReLU()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.pos = SoftPositionEmbed(c_in, config.feature_resolution)
        self.norm = nn.LayerNorm(c_in)
        self.mlp = nn.Sequential(nn.Linear(c_in, config.mlp_hidden), nn.ReLU(),
                                 nn.Linear(config.mlp_hidden, config.out_dim))
        if channels_last:
            self.convs.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, in_channels, H, W) float -> features (B, h * w, out_dim), h * w row-major."""
        cfg = self.config
        want = (cfg.in_channels,) + tuple(cfg.resolution)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != want:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must have shape (B, {want[0]}, {want[1]}, {want[2]}), got {got}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor in [-1, 1], got {images.dtype} (see to_model_range)")
        x = images.contiguous(memory_format=_memory_format(self.channels_last))
        with _autocast(x, self.bf16):
            x = self.convs(x)  # (B, C, h, w)
        x = self.pos(x.to(images.dtype))
        x = x.permute(0, 2, 3, 1).flatten(1, 2)  # (B, h * w, C); a view in channels-last order
        return self.mlp(self.norm(x))


def _basis_response(layer: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """The response of ``layer`` (bias excluded) to a constant unit image in each input channel.

    For a Conv2d / ConvTranspose2d with C input and O output channels and an input of ``size`` (h0, w0),
    returns M (C, h1, w1, O) with M[c, :, :, o] = layer(tile(e_c))[o] - bias[o], where tile(e_c) is
    channel c filled with ones and every other channel zero: one depthwise convolution of a single all-ones
    image (the same padding as the layer, so border effects are exact).
    """
    ones = layer.weight.new_ones(1, 1, *size)
    w, k = layer.weight, layer.kernel_size
    if isinstance(layer, nn.ConvTranspose2d):  # weight (C, O, k, k)
        C, O = w.shape[:2]
        r = F.conv_transpose2d(ones, w.reshape(1, C * O, *k), stride=layer.stride, padding=layer.padding,
                               output_padding=layer.output_padding)  # (1, C * O, h1, w1): index c * O + o
        return r.reshape(C, O, *r.shape[2:]).permute(0, 2, 3, 1)
    O, C = w.shape[:2]  # Conv2d weight (O, C, k, k)
    r = F.conv2d(ones, w.reshape(O * C, 1, *k), stride=layer.stride, padding=layer.padding)  # index o * C + c
    return r.reshape(O, C, *r.shape[2:]).permute(1, 2, 3, 0)


class SpatialBroadcastDecoder(nn.Module):
    """Slots (N, D) -> RGB (N, out_channels, H, W) and alpha logits (N, H, W) (module docstring).

    Args:
        config: :class:`DecoderConfig`. bf16, channels_last, factored_broadcast: the speed options of
            :class:`SlotAutoencoderConfig`.
    """

    def __init__(self, config: DecoderConfig, bf16: bool = False, channels_last: bool = False,
                 factored_broadcast: bool = False):
        super().__init__()
        if not isinstance(config, DecoderConfig):
            raise ValueError(f"config must be a DecoderConfig, got {type(config).__name__}")
        self.config, self.bf16 = config, bf16
        self.channels_last, self.factored_broadcast = channels_last, factored_broadcast
        self.pos = SoftPositionEmbed(config.slot_dim, config.broadcast)
        layers, c_in, k = [], config.slot_dim, config.kernel_size
        for c_out, s in zip(config.channels, config.strides):
            if s == 1:
                layers.append(nn.Conv2d(c_in, c_out, k, padding=k // 2))
            else:
                layers.append(nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=k // 2, output_padding=s - 1))
            layers.append(nn.ReLU())
            c_in = c_out
        ko = config.out_kernel_size
        layers.append(nn.Conv2d(c_in, config.out_channels + 1, ko, padding=ko // 2))
        self.convs = nn.Sequential(*layers)
        if channels_last:
            self.convs.to(memory_format=torch.channels_last)

    def _first_layer(self, z: torch.Tensor) -> torch.Tensor:
        """The first convolution (with bias) of tile(z) + position embedding: z (N, D) -> (N, C1, h1, w1)."""
        first = self.convs[0]
        emb = self.pos.embedding().to(z.dtype)  # (1, D, h0, w0)
        if not self.factored_broadcast:
            N, D = z.shape
            x = z[:, :, None, None].expand(N, D, *self.config.broadcast) + emb  # (N, D, h0, w0)
            return first(x.contiguous(memory_format=_memory_format(self.channels_last)))
        M = _basis_response(first, self.config.broadcast)  # (D, h1, w1, C1)
        D, h1, w1, C1 = M.shape
        const = first(emb.contiguous(memory_format=_memory_format(self.channels_last)))  # (1, C1, h1, w1), bias in
        if self.channels_last:
            y = torch.mm(z, M.reshape(D, -1)).view(-1, h1, w1, C1).permute(0, 3, 1, 2)  # NHWC memory
        else:
            y = torch.mm(z, M.permute(0, 3, 1, 2).reshape(D, -1)).view(-1, C1, h1, w1)
        return y + const

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (N, slot_dim) float -> rgb (N, out_channels, H, W), alpha logits (N, H, W), in z's dtype."""
        D = self.config.slot_dim
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != D:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"slots must have shape (N, slot_dim={D}), got {got}")
        with _autocast(z, self.bf16):
            x = self._first_layer(z)
            x = self.convs[1:](x)  # (N, out_channels + 1, H, W)
        x = x.to(z.dtype)
        return x[:, :-1], x[:, -1]


class AutoencoderOutput(NamedTuple):
    """What :class:`SlotAutoencoder` returns (K slots, (h, w) the encoder's feature grid).

    recon (B, C, H, W): the reconstruction sum_k masks_k * rgb_k.
    rgb (B, K, C, H, W): each slot's decoded image.
    masks (B, K, H, W): alpha masks, softmax over slots (they sum to 1 over K at every pixel).
    slots (B, K, D): slot attention's output.
    attn (B, K, h, w): slot attention's last attention plan (before normalization over inputs), one map per
        slot over the feature grid.
    """

    recon: torch.Tensor
    rgb: torch.Tensor
    masks: torch.Tensor
    slots: torch.Tensor
    attn: torch.Tensor


class SlotAutoencoder(nn.Module):
    """Encoder -> slot attention -> spatial broadcast decoder -> alpha compositing (module docstring).

    Usage::

        model = SlotAutoencoder(image_autoencoder_config(6, "sa-mesh", "l2"))
        out = model(to_model_range(images_uint8))         # AutoencoderOutput
        loss = F.mse_loss(out.recon, to_model_range(images_uint8))

    ``encode``, ``slot_attention`` and ``decode`` are public so that a video model can run slot attention
    frame by frame from the previous frame's slots.
    """

    def __init__(self, config: SlotAutoencoderConfig):
        super().__init__()
        if not isinstance(config, SlotAutoencoderConfig):
            raise ValueError(f"config must be a SlotAutoencoderConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = CNNEncoder(config.encoder, config.bf16, config.channels_last)
        self.slot_attention = SlotAttention(config.slot_attention)
        self.decoder = SpatialBroadcastDecoder(config.decoder, config.bf16, config.channels_last,
                                               config.factored_broadcast)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> features (B, h * w, encoder.out_dim)."""
        return self.encoder(images)

    def decode(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """slots (B, K, D) -> recon (B, C, H, W), rgb (B, K, C, H, W), masks (B, K, H, W)."""
        B, K, D = slots.shape
        rgb, alpha = self.decoder(slots.reshape(B * K, D))  # (B K, C, H, W), (B K, H, W)
        rgb = rgb.reshape(B, K, *rgb.shape[1:])
        masks = torch.softmax(alpha.reshape(B, K, *alpha.shape[1:]), dim=1)  # (B, K, H, W)
        recon = (rgb * masks[:, :, None]).sum(1)  # (B, C, H, W)
        return recon, rgb, masks

    def forward(self, images: torch.Tensor, slots: torch.Tensor | None = None) -> AutoencoderOutput:
        """images (B, C, H, W) float in [-1, 1]; optional initial slots (B, K, D) -> :class:`AutoencoderOutput`."""
        feats = self.encode(images)  # (B, h * w, out_dim)
        slots, attn = self.slot_attention(feats, slots=slots)  # (B, K, D), (B, h * w, K)
        recon, rgb, masks = self.decode(slots)
        h, w = self.config.encoder.feature_resolution
        attn = attn.transpose(1, 2).reshape(attn.shape[0], -1, h, w)  # (B, K, h, w)
        return AutoencoderOutput(recon, rgb, masks, slots, attn)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error (): images (B, C, H, W) float in [-1, 1]."""
        return F.mse_loss(self(images).recon, images)
