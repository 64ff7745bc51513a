"""The two-frame video object-discovery model of Sec. 5.4 / App. F.4: the image autoencoder of
``slots.vision`` run over the frames of a video, with slot attention carrying its slots from frame to frame.

For frames x_1 .. x_T (B, T, 3, H, W) in [-1, 1]:
    F_t = encoder(x_t)                                  every frame on its own, (B, h * w, C)
    Z_1 = SA(F_1) from the slot initialization          (B, K, D)
    Z_t = SA(F_t) from transition(Z_{t-1}), t >= 2      no predictor (App. F.4), except the noise baselines
    x_hat_t, masks_t = decoder(Z_t)                     every frame on its own, alpha masks softmaxed over slots
    loss = mean over frames and pixels of (x_hat_t - x_t)^2  (+ the KL term of the learned-noise transition)

Transitions (``TRANSITIONS``, picked by name):
    "carry":          Z_{t-1} as it is (SA, SA-SH, SA-MESH).
    "fixed-noise":    Z_{t-1} + sigma * N(0, I) (the "SA fixed noise" baseline of Table 5).
    "learned-noise":  a 2-layer MLP with LayerNorm, LN -> Linear(D, D) -> ReLU -> Linear(D, 2 D), predicts a
                      mean mu and a log-variance l; the initial slots of the next frame are mu + exp(l / 2) *
                      N(0, I), and the loss gains KL(N(mu, e^l) || N(mu, prior_var)) averaged over slots and
                      features, 0.5 (e^l / prior_var - 1 - log(e^l / prior_var)) (stochastic SAVi of Wu et al.,
                      2022, as App. F.4 describes; the official code's transition draws with std e^l instead of
                      e^(l / 2), and its KL is the one for variance e^l, which we keep consistent here).
The noise is drawn in evaluation too (the transition is part of the model, as in the official code).

Gradients flow through Z_{t-1} into frame t (no detaching), as in the official code.

Known limits: the frames of a batch must all have the encoder's resolution; the transitions see only the
slots (no actions or other conditioning).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from slots import SlotAutoencoder, SlotAutoencoderConfig

__all__ = ["VideoModelConfig", "VideoOutput", "VideoSlotAutoencoder", "TRANSITIONS", "video_loss"]


class _Carry(nn.Module):
    """The previous frame's slots, unchanged."""

    def __init__(self, dim: int, config: "VideoModelConfig"):
        super().__init__()

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return slots, slots.new_zeros(())


class _FixedNoise(nn.Module):
    """slots + sigma * N(0, I)."""

    def __init__(self, dim: int, config: "VideoModelConfig"):
        super().__init__()
        self.sigma = config.noise_sigma

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return slots + self.sigma * torch.randn_like(slots), slots.new_zeros(())


class _LearnedNoise(nn.Module):
    """A sample of N(mu(slots), exp(l(slots))) and its KL divergence to N(mu, prior_var) (module docstring)."""

    def __init__(self, dim: int, config: "VideoModelConfig"):
        super().__init__()
        self.prior_var = config.noise_prior_var
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 2 * dim))

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.net(slots).chunk(2, dim=-1)  # (B, K, D) each
        sample = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        ratio_log = log_var - math.log(self.prior_var)  # log(var / prior_var)
        kl = 0.5 * (ratio_log.exp() - 1 - ratio_log)  # (B, K, D)
        return sample, kl.mean()


TRANSITIONS: dict[str, Callable[[int, "VideoModelConfig"], nn.Module]] = {
    "carry": _Carry,
    "fixed-noise": _FixedNoise,
    "learned-noise": _LearnedNoise,
}


@dataclass
class VideoModelConfig:
    """Options of :class:`VideoSlotAutoencoder`.

    Attributes:
        autoencoder: the image model (``slots.SlotAutoencoderConfig``, or a dict of its fields).
        transition: a key of ``TRANSITIONS``.
        noise_sigma: standard deviation of the "fixed-noise" transition, > 0.
        noise_prior_var: variance of the KL prior of the "learned-noise" transition, > 0.
    """

    autoencoder: SlotAutoencoderConfig
    transition: str = "carry"
    noise_sigma: float = 0.1
    noise_prior_var: float = 0.01

    def __post_init__(self):
        if isinstance(self.autoencoder, dict):
            self.autoencoder = SlotAutoencoderConfig(**self.autoencoder)
        if not isinstance(self.autoencoder, SlotAutoencoderConfig):
            raise ValueError(f"autoencoder must be a SlotAutoencoderConfig or a dict of its fields, got "
                             f"{type(self.autoencoder).__name__}")
        if self.transition not in TRANSITIONS:
            raise ValueError(f"unknown transition {self.transition!r}; choose one of {sorted(TRANSITIONS)}")
        for name in ("noise_sigma", "noise_prior_var"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-serializable); ``VideoModelConfig(**d)`` restores it."""
        return asdict(self)


class VideoOutput(NamedTuple):
    """What :class:`VideoSlotAutoencoder` returns (T frames, K slots, (h, w) the encoder's feature grid).

    recon (B, T, C, H, W): reconstructions. masks (B, T, K, H, W): alpha masks, softmax over slots.
    slots (B, T, K, D): each frame's slots; slot k of frame t started from slot k of frame t - 1.
    attn (B, T, K, h, w): slot attention's last plan on each frame. reg (): the transition's loss term.
    """

    recon: torch.Tensor
    masks: torch.Tensor
    slots: torch.Tensor
    attn: torch.Tensor
    reg: torch.Tensor


class VideoSlotAutoencoder(nn.Module):
    """Encoder per frame -> slot attention frame by frame -> decoder per frame (module docstring).

    Usage::

        model = VideoSlotAutoencoder(VideoModelConfig(image_autoencoder_config(8, "sa-mesh", "cosine")))
        out = model(to_model_range(videos_uint8))       # videos (B, T, 3, H, W)
        loss = model.loss(to_model_range(videos_uint8))
    """

    def __init__(self, config: VideoModelConfig):
        super().__init__()
        if not isinstance(config, VideoModelConfig):
            raise ValueError(f"config must be a VideoModelConfig, got {type(config).__name__}")
        self.config = config
        self.image = SlotAutoencoder(config.autoencoder)
        self.transition = TRANSITIONS[config.transition](config.autoencoder.slot_attention.dim, config)

    def forward(self, frames: torch.Tensor) -> VideoOutput:
        """frames (B, T, C, H, W) float in [-1, 1], T >= 1 -> :class:`VideoOutput`."""
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or frames.shape[1] < 1:
            got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"frames must have shape (B, T >= 1, C, H, W), got {got}")
        B, T = frames.shape[:2]
        feats = self.image.encode(frames.flatten(0, 1))  # (B T, h w, C): every frame on its own
        feats = feats.unflatten(0, (B, T))
        per_frame, attns, reg, slots = [], [], frames.new_zeros(()), None
        for t in range(T):
            if slots is not None:
                slots, r = self.transition(slots)
                reg = reg + r
            slots, attn = self.image.slot_attention(feats[:, t], slots=slots)  # (B, K, D), (B, h w, K)
            per_frame.append(slots)
            attns.append(attn)
        slots = torch.stack(per_frame, 1)  # (B, T, K, D)
        recon, _, masks = self.image.decode(slots.flatten(0, 1))  # (B T, C, H, W), _, (B T, K, H, W)
        h, w = self.config.autoencoder.encoder.feature_resolution
        attn = torch.stack(attns, 1).transpose(2, 3).reshape(B, T, -1, h, w)  # (B, T, K, h, w)
        return VideoOutput(recon.unflatten(0, (B, T)), masks.unflatten(0, (B, T)), slots, attn, reg)

    def loss(self, frames: torch.Tensor) -> torch.Tensor:
        """:func:`video_loss` of this model on frames (B, T, C, H, W) in [-1, 1]: ()."""
        return video_loss(self(frames), frames)


def video_loss(out: VideoOutput, frames: torch.Tensor) -> torch.Tensor:
    """Reconstruction MSE over all frames and pixels plus the transition's term: ().

    Args:
        out: the model's output on ``frames``. frames: (B, T, C, H, W) in [-1, 1].
    """
    return F.mse_loss(out.recon, frames) + out.reg
