"""Slot attention with optimal-transport cross-attention (SA, SA-SH, SA-EMD, SA-MESH), the Hungarian set
loss and the evaluation metrics of Zhang et al. (ICML 2023).

Conventions: inputs x (B, n, input_dim), slots (B, n_slots, dim); attention plans (B, n, n_slots) with
rows = inputs and columns = slots, as in ``kernels``. Images (B, C, H, W) in [-1, 1] for the
object-discovery autoencoder of ``slots.vision``. ``load_pretrained(folder)`` reads back a model exported by
``python -m tasks.export`` (``slots.pretrained``).
"""
from .attention import (ATTENTION_VARIANTS, COSTS, MARGINAL_INPUTS, MESH_OBJECTIVES, SLOT_INITS, OTConfig, SlotAttention,
                        SlotAttentionConfig)
from .compiled import compile_model
from .losses import hungarian_huber_loss, hungarian_match, hungarian_mse_loss, pairwise_huber, pairwise_mse
from .mesh_variants import LearnedObjective, MeshVariant, PairSimilarity, entropy_objective, mesh_autograd
from .metrics import (
    CLEVR_AP_THRESHOLDS,
    clevr_average_precision,
    fg_ari,
    fg_miou,
    normalized_hungarian_rmse,
    plan_entropy,
    temporal_consistency,
)
from .pretrained import PretrainedError, load_pretrained, save_pretrained
from .vision import (
    AutoencoderOutput,
    CNNEncoder,
    DecoderConfig,
    EncoderConfig,
    SlotAutoencoder,
    SlotAutoencoderConfig,
    SoftPositionEmbed,
    SpatialBroadcastDecoder,
    build_grid,
    image_autoencoder_config,
    native_bf16,
    to_model_range,
)

__all__ = [
    "SlotAttention",
    "SlotAttentionConfig",
    "OTConfig",
    "ATTENTION_VARIANTS",
    "COSTS",
    "SLOT_INITS",
    "MESH_OBJECTIVES",
    "MARGINAL_INPUTS",
    "compile_model",
    "mesh_autograd",
    "entropy_objective",
    "LearnedObjective",
    "PairSimilarity",
    "MeshVariant",
    "hungarian_mse_loss",
    "hungarian_huber_loss",
    "hungarian_match",
    "pairwise_mse",
    "pairwise_huber",
    "normalized_hungarian_rmse",
    "clevr_average_precision",
    "CLEVR_AP_THRESHOLDS",
    "fg_ari",
    "fg_miou",
    "temporal_consistency",
    "plan_entropy",
    "SlotAutoencoder",
    "SlotAutoencoderConfig",
    "AutoencoderOutput",
    "EncoderConfig",
    "DecoderConfig",
    "CNNEncoder",
    "SoftPositionEmbed",
    "SpatialBroadcastDecoder",
    "build_grid",
    "image_autoencoder_config",
    "native_bf16",
    "to_model_range",
    "save_pretrained",
    "load_pretrained",
    "PretrainedError",
]
