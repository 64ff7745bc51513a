"""The CLEVR set-prediction model (Sec. 5.2, App. F.2), Locatello et al.'s (2020) property-prediction network
with the paper's four cross-attention variants.

    image (B, 3, S, S) in [-1, 1]
    -> slots.CNNEncoder: 4 convolutions 5x5, 64 channels, strides (1, 2, 2, 1), ReLU; soft position
       embedding; flattened; LayerNorm, MLP 64 -> 64 -> 64                (B, n, 64), n = S^2 / 16
    -> slot attention: 10 slots of 64, 3 iterations, MLP 128            (B, 10, 64)
    -> per slot MLP 64 -> 64 -> 19, sigmoid                              (B, 10, 19)

At S = 128 (the paper's) the slots attend to 32 x 32 = 1,024 inputs. The 19 outputs follow
``tasks.clevr.data.SET_PREDICTION_LAYOUT``: coordinates in [0, 1], one-hot size, material, shape and colour,
and the "real object" confidence.

Speed (``slots.vision``'s options): the convolutions run in channels-last memory and, with ``bf16``, under
bfloat16 autocast (weights kept in float32, cast per call); everything from the position embedding on (slot
attention, the OT kernels, the head) is float32. ``bf16=False, channels_last=False`` is the plain float32
eager model.

Choices the paper leaves open, and the ones made here: the attention cost per variant as in the
random-objects model (``tasks.random_objects.model.DEFAULT_COSTS``: "dot" for SA, "l2" for the OT
variants); the learned-Gaussian slot initialization; symmetric zero padding of 2 for every convolution
(TensorFlow's "SAME" pads the stride-2 layers asymmetrically; the output sizes are the same).

Known limits: images must be S x S (the position grid is built for the configured size).
"""
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from slots import CNNEncoder, EncoderConfig, OTConfig, SlotAttention, SlotAttentionConfig

from ..random_objects.model import DEFAULT_COSTS
from .data import SET_TARGET_DIM

__all__ = ["ClevrModelConfig", "ClevrSetModel", "SetOutput"]

_STRIDES = (1, 2, 2, 1)


@dataclass
class ClevrModelConfig:
    """Options of :class:`ClevrSetModel`; ``ClevrModelConfig.of(variant)`` is the paper's model of a variant.

    Attributes:
        slot_attention: the :class:`slots.SlotAttentionConfig`; its ``input_dim`` is the number of convolution
            channels (64), its ``dim`` the slot size (64).
        image_size: S, the input images' side.
        bf16: the convolutions under bfloat16 autocast.
        channels_last: convolutions in channels-last memory.
    """

    slot_attention: SlotAttentionConfig
    image_size: int = 128
    bf16: bool = False
    channels_last: bool = True

    def __post_init__(self):
        if isinstance(self.slot_attention, dict):
            self.slot_attention = SlotAttentionConfig(**self.slot_attention)
        if not isinstance(self.slot_attention, SlotAttentionConfig):
            raise ValueError(f"slot_attention must be a SlotAttentionConfig, got {type(self.slot_attention).__name__}")
        for name in ("bf16", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self.encoder()  # validates image_size

    @classmethod
    def of(cls, variant: str, implicit_grad: bool = True, ot: OTConfig | None = None, n_iters: int = 3,
           cost: str | None = None, **options) -> "ClevrModelConfig":
        """The paper's model of ``variant``: 10 slots of 64 on 64 channels, ``n_iters`` iterations, MLP 128,
        learned Gaussian initialization, the cost ``DEFAULT_COSTS[variant]`` (``cost`` replaces it for the OT
        variants); ``options`` are the other fields."""
        if variant not in DEFAULT_COSTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(DEFAULT_COSTS)}")
        cost = DEFAULT_COSTS[variant] if cost is None or variant == "sa" else cost
        return cls(SlotAttentionConfig(n_slots=10, dim=64, input_dim=64, variant=variant, cost=cost,
                                       n_iters=n_iters, mlp_hidden=128, init="learned", implicit_grad=implicit_grad,
                                       ot=OTConfig() if ot is None else ot), **options)

    def encoder(self) -> EncoderConfig:
        """The image encoder: 4 convolutions 5 x 5 of ``slot_attention.input_dim`` channels, strides (1, 2, 2, 1),
        an MLP of that width."""
        c = self.slot_attention.input_dim
        return EncoderConfig(channels=(c,) * 4, strides=_STRIDES, kernel_size=5, resolution=(self.image_size,) * 2,
                             out_dim=c, mlp_hidden=c)

    def to_dict(self) -> dict:
        """Plain nested dict; ``ClevrModelConfig(**d)`` restores it."""
        return asdict(self)


class SetOutput(NamedTuple):
    """What :meth:`ClevrSetModel.infer` returns (K slots, (h, w) = (S / 4, S / 4) the encoder's feature grid).

    pred (B, K, 19): the predicted objects in [0, 1]. slots (B, K, D): slot attention's output.
    attn (B, K, h, w): slot attention's last attention plan, one map per slot over the feature grid.
    """

    pred: torch.Tensor
    slots: torch.Tensor
    attn: torch.Tensor


class ClevrSetModel(nn.Module):
    """Image -> a set of 10 predicted objects (see the module docstring)."""

    def __init__(self, config: ClevrModelConfig):
        super().__init__()
        self.config = config
        self.encoder = CNNEncoder(config.encoder(), bf16=config.bf16, channels_last=config.channels_last)
        self.slot_attention = SlotAttention(config.slot_attention)
        d = config.slot_attention.dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, SET_TARGET_DIM), nn.Sigmoid())

    def infer(self, image: torch.Tensor) -> SetOutput:
        """image (B, 3, S, S) float in [-1, 1] -> :class:`SetOutput`: the predictions with the slots and the
        attention maps behind them."""
        slots, attn = self.slot_attention(self.encoder(image))  # (B, n, 64) features -> (B, K, dim), (B, n, K)
        h, w = self.config.encoder().feature_resolution
        return SetOutput(self.head(slots), slots, attn.transpose(1, 2).reshape(attn.shape[0], -1, h, w))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S) float in [-1, 1] -> predictions (B, n_slots, 19) in [0, 1]."""
        return self.infer(image).pred
