"""Table 3 of the paper: unsupervised object discovery on Multi-dSprites with SA, SA-SH and SA-MESH (SA-EMD
opt-in; Sec. 5.3, App. F.3, App. H), as a spec of the shared runner (``tasks.runner``) built by
``tasks.object_discovery.make_task``.

Data: the colored-on-grayscale variant (2-5 sprites, 6 slots) by default, generated (``tasks.multi_dsprites
.data``) or read from DeepMind's TFRecord file with ``--data-dir``; the official splits (first 60,000 images
train, images 60,320-63,199 test).

Budgets: "paper" is the paper's schedule (530 epochs of batch 64 at 64x64: 496,610 steps; Adam 4e-4, warm-up
10k steps, then halved every 100k steps counted from step 0; gradient norm clipped at 0.1), for a GPU. "cpu"
(the default without a GPU) is the reduced schedule chosen for two CPU cores: 3,500 steps of batch 16 on
32x32 images, the same optimizer and clipping with a warm-up of 350 steps and the rate halved over the run,
and the first 960 test images. It is sized from step times measured on a loaded two-core machine (about
1.15 s per step on one thread, RESULTS.md): about 70 minutes per run, so the three default variants in two
parallel jobs (one of them trains two runs) should take about 2.5 hours. "quick" is a
run of a minute or two that shows the pipeline end to end.

Known limits: at the CPU budget the model sees 32x32 images (sprites of 3-9 pixels) for a few thousand steps,
a small fraction of the paper's 500k steps; see RESULTS.md for what it reaches.
"""
from dataclasses import dataclass

from ..object_discovery import ImageDataset, ModelSpec, ObjectDiscoveryConfig, make_task, paper_budget
from ..runner import Budget
from .data import DEFAULT_VARIANT, IMAGE_SIZE, MAX_OBJECTS, SPLITS, VARIANT_ENTITIES, VARIANTS, load_multi_dsprites

__all__ = ["MultiDspritesConfig", "TASK", "BUDGETS", "PAPER_TABLE3", "DATASET"]

# Table 3 of Zhang et al. (ICML 2023), mean ± std over 5 seeds, in %: the paper's figures, not ours.
PAPER_TABLE3 = {
    "SA (Locatello et al., 2020)": {"fg_ari": (91.3, 0.3)},
    "sa": {"fg_ari": (92.2, 0.5), "fg_miou": (24.3, 5.4)},
    "sa-sh": {"fg_ari": (87.2, 1.8), "fg_miou": (84.0, 3.1)},
    "sa-mesh": {"fg_ari": (95.6, 0.2), "fg_miou": (86.2, 2.2)},
}
BUDGETS = {
    "paper": paper_budget(SPLITS["train"][1]),
    "cpu": Budget(steps=3_500, batch_size=16, lr=4e-4, warmup_steps=350, decay_rate=0.5, decay_steps=3_500,
                  grad_clip=0.1, eval_every=500, ckpt_every=250, overrides={"resolution": 32, "n_test": 960},
                  note="the CPU budget"),
    "quick": Budget(steps=40, batch_size=8, warmup_steps=5, decay_steps=40, grad_clip=0.1, eval_every=20,
                    ckpt_every=20, overrides={"resolution": 16, "n_train": 512, "n_test": 32},
                    note="a check of the pipeline, not a result"),
}


@dataclass
class MultiDspritesConfig(ObjectDiscoveryConfig):
    """``ObjectDiscoveryConfig`` with Multi-dSprites' default variant (``--data-variant``)."""

    data_variant: str = DEFAULT_VARIANT

    def __post_init__(self):
        super().__post_init__()
        allowed = VARIANTS if self.data_dir is None else VARIANT_ENTITIES
        if self.data_variant not in allowed:
            raise ValueError(f"data_variant must be one of {sorted(allowed)}, got {self.data_variant!r}")


def _read(split: str, num_images: int | None, cfg: MultiDspritesConfig):
    return load_multi_dsprites(split, num_images=num_images, data_dir=cfg.data_dir, variant=cfg.data_variant)


def _paper(cfg: MultiDspritesConfig) -> dict:
    return PAPER_TABLE3 if cfg.data_variant == DEFAULT_VARIANT else {}


DATASET = ImageDataset(title="Multi-dSprites", native=IMAGE_SIZE, max_objects=MAX_OBJECTS, read=_read,
                       sizes={split: n for split, (_, n) in SPLITS.items()},
                       spec=ModelSpec(channels=32, slot_dim=64, mlp_hidden=128, n_slots=MAX_OBJECTS + 1))
TASK = make_task("multi_dsprites", MultiDspritesConfig, DATASET, _paper, "Table 3, mean ± std of 5 seeds",
                 BUDGETS, data_variants=(DEFAULT_VARIANT, "colored_on_colored", "binarized"))
