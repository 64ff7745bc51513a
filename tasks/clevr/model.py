"""The CLEVR set-prediction model (Sec. 5.2, App. F.2), Locatello et al.'s (2020) property-prediction network
with the paper's four cross-attention variants.

    image (B, 3, S, S) in [-1, 1]
    -> 4 convolutions 5x5, 64 channels, strides (1, 2, 2, 1), ReLU      (B, 64, S/4, S/4)
    -> + soft position embedding (a linear map of the [x, y, 1 - x, 1 - y] grid), flattened  (B, S^2/16, 64)
    -> LayerNorm, MLP 64 -> 64 -> 64                                     (B, n, 64), n = S^2 / 16
    -> slot attention: 10 slots of 64, 3 iterations, MLP 128            (B, 10, 64)
    -> per slot MLP 64 -> 64 -> 19, sigmoid                              (B, 10, 19)

At S = 128 (the paper's) the slots attend to 32 x 32 = 1,024 inputs. The 19 outputs follow
``tasks.clevr.data.SET_PREDICTION_LAYOUT``: coordinates in [0, 1], one-hot size, material, shape and colour,
and the "real object" confidence.

Speed (CPU and GPU): the convolutions run in channels-last memory and, with ``conv_dtype="bfloat16"``,
under bfloat16 autocast (weights kept in float32, cast per call); their output is cast back to float32,
and everything from the position embedding on (slot attention, the OT kernels, the head) is float32.
Channels-last makes the flattening to (B, n, 64) a view. ``conv_dtype="float32"`` with
``channels_last=False`` is the plain float32 eager model.

Choices the paper leaves open, and the ones made here: the attention cost per variant as in the
random-objects model (``tasks.random_objects.model.DEFAULT_COSTS``: "dot" for SA, "l2" for the OT
variants); the learned-Gaussian slot initialization; symmetric zero padding of 2 for every convolution
(TensorFlow's "SAME" pads the stride-2 layers asymmetrically; the output sizes are the same).

Known limits: the image encoder is written here; it moves to the shared ``slots.vision`` module once that
exists.
"""
from dataclasses import asdict, dataclass

import torch
from torch import nn

from slots import OTConfig, SlotAttention, SlotAttentionConfig

from ..random_objects.model import DEFAULT_COSTS
from .data import SET_TARGET_DIM

__all__ = ["ClevrModelConfig", "ClevrSetModel", "SoftPositionEmbedding", "CONV_DTYPES", "default_conv_dtype"]

CONV_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_STRIDES = (1, 2, 2, 1)


def default_conv_dtype() -> str:
    """"bfloat16" on CUDA and on CPUs with native bfloat16 (AVX-512 BF16 or AMX), else "float32"."""
    if torch.cuda.is_available():
        return "bfloat16"
    cpu = torch.cpu
    native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported",
                                                                                  lambda: False)()
    return "bfloat16" if native else "float32"


@dataclass
class ClevrModelConfig:
    """Options of :class:`ClevrSetModel`; ``ClevrModelConfig.of(variant)`` is the paper's model of a variant.

    Attributes:
        slot_attention: the :class:`slots.SlotAttentionConfig`; its ``input_dim`` is the number of convolution
            channels (64), its ``dim`` the slot size (64).
        image_size: S, the input images' side, a multiple of 4.
        conv_dtype: "bfloat16" (autocast) or "float32" for the convolutions.
        channels_last: convolutions in channels-last memory.
    """

    slot_attention: SlotAttentionConfig
    image_size: int = 128
    conv_dtype: str = "float32"
    channels_last: bool = True

    def __post_init__(self):
        if isinstance(self.slot_attention, dict):
            self.slot_attention = SlotAttentionConfig(**self.slot_attention)
        if not isinstance(self.slot_attention, SlotAttentionConfig):
            raise ValueError(f"slot_attention must be a SlotAttentionConfig, got {type(self.slot_attention).__name__}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8 \
                or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, at least 8, got {self.image_size!r}")
        if self.conv_dtype not in CONV_DTYPES:
            raise ValueError(f"conv_dtype must be one of {sorted(CONV_DTYPES)}, got {self.conv_dtype!r}")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be a bool, got {self.channels_last!r}")

    @classmethod
    def of(cls, variant: str, implicit_grad: bool = True, ot: OTConfig | None = None, **options) -> "ClevrModelConfig":
        """The paper's model of ``variant``: 10 slots of 64 on 64 channels, 3 iterations, MLP 128, learned
        Gaussian initialization, the cost ``DEFAULT_COSTS[variant]``; ``options`` are the other fields."""
        if variant not in DEFAULT_COSTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(DEFAULT_COSTS)}")
        return cls(SlotAttentionConfig(n_slots=10, dim=64, input_dim=64, variant=variant, cost=DEFAULT_COSTS[variant],
                                       n_iters=3, mlp_hidden=128, init="learned", implicit_grad=implicit_grad,
                                       ot=OTConfig() if ot is None else ot), **options)

    @property
    def feature_size(self) -> int:
        """The side of the feature grid, image_size / 4 (two stride-2 convolutions)."""
        return self.image_size // 4

    def to_dict(self) -> dict:
        """Plain nested dict; ``ClevrModelConfig(**d)`` restores it."""
        return asdict(self)


class SoftPositionEmbedding(nn.Module):
    """Adds a learned linear map of the 4-channel grid [x, y, 1 - x, 1 - y] (each in [0, 1]) to features.

    Locatello et al.'s soft position embedding: features (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size[0]), torch.linspace(0, 1, size[1]), indexing="ij")
        grid = torch.stack([xs, ys, 1 - xs, 1 - ys], dim=-1)  # (H, W, 4)
        self.register_buffer("grid", grid, persistent=False)
        self.proj = nn.Linear(4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.grid)  # (B, H, W, C) + (H, W, C)


class ClevrSetModel(nn.Module):
    """Image -> a set of 10 predicted objects (see the module docstring)."""

    def __init__(self, config: ClevrModelConfig):
        super().__init__()
        self.config = config
        c, d = config.slot_attention.input_dim, config.slot_attention.dim
        layers, c_in = [], 3
        for stride in _STRIDES:
            layers += [nn.Conv2d(c_in, c, 5, stride=stride, padding=2), nn.ReLU(inplace=True)]
            c_in = c
        self.convs = nn.Sequential(*layers)
        f = config.feature_size
        self.position = SoftPositionEmbedding(c, (f, f))
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        self.slot_attention = SlotAttention(config.slot_attention)
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, SET_TARGET_DIM), nn.Sigmoid())
        if config.channels_last:
            self.convs.to(memory_format=torch.channels_last)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S) float in [-1, 1] -> slot-attention inputs (B, S^2 / 16, input_dim), float32."""
        cfg = self.config
        if image.dim() != 4 or tuple(image.shape[1:]) != (3, cfg.image_size, cfg.image_size):
            raise ValueError(f"image must have shape (B, 3, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(image.shape)}")
        if cfg.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)  # no copy if it already is
        dtype = CONV_DTYPES[cfg.conv_dtype]
        with torch.autocast(image.device.type, dtype=dtype, enabled=dtype != torch.float32):
            h = self.convs(image)  # (B, C, f, f)
        h = h.permute(0, 2, 3, 1).float()  # (B, f, f, C): a view in channels-last, then the cast
        h = self.position(h)
        h = h.reshape(h.shape[0], -1, h.shape[3])  # (B, n, C), n = f * f
        return self.mlp(self.norm(h))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S) float in [-1, 1] -> predictions (B, n_slots, 19) in [0, 1]."""
        slots, _ = self.slot_attention(self.features(image))  # (B, n_slots, dim)
        return self.head(slots)
