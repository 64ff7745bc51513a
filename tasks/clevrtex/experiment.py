"""Table 4 of the paper: unsupervised object discovery on ClevrTex with SA, SA-SH and SA-MESH (SA-EMD opt-in;
Sec. 5.3, App. F.3), as a spec of the shared runner (``tasks.runner``) built by
``tasks.object_discovery.make_task``.

Data: ClevrTex-like scenes from the generator (``tasks.clevrtex.data``), or the real ``clevrtex_<variant>``
folder with ``--data-dir`` (the benchmark's splits; centre crop (64, 24, 256, 216) resized to 64x64); up to
10 objects, so 11 slots. Model: the Multi-dSprites architecture with doubled widths (App. F.3): 64-channel
encoder and decoder, slots of 128, slot-attention MLP 256.

Budgets: "paper" is the paper's schedule (530 epochs of the 40,000 training images at batch 64: 331,250
steps; Adam 4e-4, warm-up 10k, halved every 100k steps; gradient norm clipped at 0.1), for a GPU. "cpu" (the
default without a GPU) is a short run that shows the pipeline training end to end on two cores: 300 steps of
batch 16 on 32x32 images, 2,048 generated training images, 256 test images. "quick" is a check of a minute
or two.

Known limits: the generator renders about four images a second per core, so the CPU budget uses few images;
the "cpu" budget is far too short for slots to bind to ClevrTex's textured objects.
"""
from dataclasses import dataclass

from ..object_discovery import ImageDataset, ModelSpec, ObjectDiscoveryConfig, make_task, paper_budget
from ..pool import cores
from ..runner import Budget
from .data import IMAGE_SIZE, MAX_OBJECTS, SPLITS, load_clevrtex

__all__ = ["ClevrTexConfig", "TASK", "BUDGETS", "PAPER_TABLE4", "DATASET", "DATA_VARIANTS"]

# Table 4 of Zhang et al. (ICML 2023), mean ± std over 5 seeds, in %: the paper's figures, not ours.
PAPER_TABLE4 = {
    "sa": {"fg_ari": (52.8, 14.9), "fg_miou": (26.3, 14.9)},
    "sa-sh": {"fg_ari": (70.8, 5.8), "fg_miou": (35.3, 4.4)},
    "sa-mesh": {"fg_ari": (79.0, 2.6), "fg_miou": (43.2, 4.0)},
}
DATA_VARIANTS = ("full", "camo", "grassbg", "pbg", "vbg", "outd")
BUDGETS = {
    "paper": paper_budget(SPLITS["train"][1]),
    "cpu": Budget(steps=300, batch_size=16, lr=4e-4, warmup_steps=50, decay_rate=0.5, decay_steps=300,
                  grad_clip=0.1, eval_every=100, ckpt_every=50,
                  overrides={"resolution": 32, "n_train": 2_048, "n_test": 256},
                  note="a short CPU run: the pipeline end to end, not a result"),
    "quick": Budget(steps=20, batch_size=8, warmup_steps=5, decay_steps=20, grad_clip=0.1, eval_every=10,
                    ckpt_every=10, overrides={"resolution": 16, "n_train": 64, "n_test": 16},
                    note="a check of the pipeline, not a result"),
}


@dataclass
class ClevrTexConfig(ObjectDiscoveryConfig):
    """``ObjectDiscoveryConfig`` with ClevrTex's default variant (``--data-variant``, real data only)."""

    data_variant: str = "full"

    def __post_init__(self):
        super().__post_init__()
        if self.data_variant not in DATA_VARIANTS:
            raise ValueError(f"data_variant must be one of {DATA_VARIANTS}, got {self.data_variant!r}")
        if self.data_dir is None and self.data_variant != "full":
            raise ValueError("the generated ClevrTex data has no variants; --data-variant needs --data-dir")


def _read(split: str, num_images: int | None, cfg: ClevrTexConfig):
    return load_clevrtex(split, num_images=num_images, data_dir=cfg.data_dir, variant=cfg.data_variant,
                         workers=cores())


def _paper(cfg: ClevrTexConfig) -> dict:
    return PAPER_TABLE4 if cfg.data_variant == "full" else {}


DATASET = ImageDataset(title="ClevrTex", native=IMAGE_SIZE, max_objects=MAX_OBJECTS, read=_read,
                       sizes={split: n for split, (_, n) in SPLITS.items()},
                       spec=ModelSpec(channels=64, slot_dim=128, mlp_hidden=256, n_slots=MAX_OBJECTS + 1))
TASK = make_task("clevrtex", ClevrTexConfig, DATASET, _paper, "Table 4, mean ± std of 5 seeds", BUDGETS,
                 data_variants=DATA_VARIANTS)
