"""The two data sets of the object-discovery task: Multi-dSprites (Table 3) and ClevrTex (Table 4), each an
:class:`~tasks.object_discovery.ImageDataset` (reader, model widths, the paper's figures, budgets) and a runner
spec in :data:`TASKS`.

Multi-dSprites: the colored-on-grayscale variant (2-5 sprites, 6 slots) by default, generated
(``tasks.multi_dsprites.data``) or read from DeepMind's TFRecord file with ``--data-dir``; the official splits
(first 60,000 images train, images 60,320-63,199 test). Its "cpu" budget (the default without a GPU) is the
reduced schedule chosen for two CPU cores: 3,500 steps of batch 16 on 32x32 images, the paper's optimizer and
clipping with a warm-up of 350 steps and the rate halved over the run, and the first 960 test images; sized from
step times measured on a loaded two-core machine (RESULTS.md).

ClevrTex: ClevrTex-like scenes from the generator (``tasks.clevrtex.data``), or the real ``clevrtex_<variant>``
folder with ``--data-dir`` (the benchmark's splits; centre crop (64, 24, 256, 216) resized to 64x64); up to 10
objects, so 11 slots. Model: the Multi-dSprites architecture with doubled widths (App. F.3): 64-channel encoder
and decoder, slots of 128, slot-attention MLP 256. Its "cpu" budget is a short run that shows the pipeline
training end to end on two cores: 300 steps of batch 16 on 32x32 images, 2,048 generated training images, 256
test images.

Both: "paper" is the paper's schedule (``paper_budget``: 530 epochs at batch 64 and 64x64), for a GPU; "quick"
is a check of a minute or two.

Known limits: at the CPU budgets the models are far from the paper's 300-500k steps (see RESULTS.md); the
ClevrTex generator renders about four images a second per core, so its CPU budget uses few images.
"""
from dataclasses import dataclass

from ..clevrtex import data as clevrtex
from ..multi_dsprites import data as mds
from ..pool import cores
from ..runner import Budget
from . import ImageDataset, ModelSpec, ObjectDiscoveryConfig, make_task, option, paper_budget

__all__ = ["PAPER_TABLE3", "PAPER_TABLE4", "MultiDspritesConfig", "ClevrTexConfig", "MULTI_DSPRITES", "CLEVRTEX",
           "DATASETS", "TASKS", "CLEVRTEX_VARIANTS"]

# Table 3 and Table 4 of Zhang et al. (ICML 2023), mean ± std over 5 seeds, in %: the paper's figures, not ours.
PAPER_TABLE3 = {
    "SA (Locatello et al., 2020)": {"fg_ari": (91.3, 0.3)},
    "sa": {"fg_ari": (92.2, 0.5), "fg_miou": (24.3, 5.4)},
    "sa-sh": {"fg_ari": (87.2, 1.8), "fg_miou": (84.0, 3.1)},
    "sa-mesh": {"fg_ari": (95.6, 0.2), "fg_miou": (86.2, 2.2)},
}
PAPER_TABLE4 = {
    "sa": {"fg_ari": (52.8, 14.9), "fg_miou": (26.3, 14.9)},
    "sa-sh": {"fg_ari": (70.8, 5.8), "fg_miou": (35.3, 4.4)},
    "sa-mesh": {"fg_ari": (79.0, 2.6), "fg_miou": (43.2, 4.0)},
}
_QUICK = "a check of the pipeline, not a result"
MULTI_DSPRITES_BUDGETS = {
    "paper": paper_budget(mds.SPLITS["train"][1]),
    "cpu": Budget(steps=3_500, batch_size=16, lr=4e-4, warmup_steps=350, decay_rate=0.5, decay_steps=3_500,
                  grad_clip=0.1, eval_every=500, ckpt_every=250, overrides={"resolution": 32, "n_test": 960},
                  note="the CPU budget"),
    "quick": Budget(steps=40, batch_size=8, warmup_steps=5, decay_steps=40, grad_clip=0.1, eval_every=20,
                    ckpt_every=20, overrides={"resolution": 16, "n_train": 512, "n_test": 32}, note=_QUICK),
}
CLEVRTEX_BUDGETS = {
    "paper": paper_budget(clevrtex.SPLITS["train"][1]),
    "cpu": Budget(steps=300, batch_size=16, lr=4e-4, warmup_steps=50, decay_rate=0.5, decay_steps=300,
                  grad_clip=0.1, eval_every=100, ckpt_every=50,
                  overrides={"resolution": 32, "n_train": 2_048, "n_test": 256},
                  note="a short CPU run: the pipeline end to end, not a result"),
    "quick": Budget(steps=20, batch_size=8, warmup_steps=5, decay_steps=20, grad_clip=0.1, eval_every=10,
                    ckpt_every=10, overrides={"resolution": 16, "n_train": 64, "n_test": 16}, note=_QUICK),
}
MDS_VARIANTS = (mds.DEFAULT_VARIANT, "colored_on_colored", "binarized")
CLEVRTEX_VARIANTS = ("full", "camo", "grassbg", "pbg", "vbg", "outd")


@dataclass
class MultiDspritesConfig(ObjectDiscoveryConfig):
    dataset = "multi_dsprites"
    data_variant: str = option(mds.DEFAULT_VARIANT, "data variant (binarized: real data only)", choices=MDS_VARIANTS)


@dataclass
class ClevrTexConfig(ObjectDiscoveryConfig):
    dataset = "clevrtex"
    data_variant: str = option("full", "data variant (the others: real data only)", choices=CLEVRTEX_VARIANTS)


def _read_mds(split: str, num_images: int | None, cfg: MultiDspritesConfig):
    return mds.load_multi_dsprites(split, num_images=num_images, data_dir=cfg.data_dir, variant=cfg.data_variant)


def _read_clevrtex(split: str, num_images: int | None, cfg: ClevrTexConfig):
    return clevrtex.load_clevrtex(split, num_images=num_images, data_dir=cfg.data_dir, variant=cfg.data_variant,
                                  workers=cores())


def _mds_samples(args):
    return mds.load_multi_dsprites(args.split, num_images=args.num, seed=args.seed, data_dir=args.data_dir,
                                   cache_dir=args.cache_dir, variant=args.variant)


def _clevrtex_samples(args):
    return clevrtex.load_clevrtex(args.split, num_images=args.num, seed=args.seed, data_dir=args.data_dir,
                                  variant=args.variant, cache_dir=args.cache_dir, workers=args.workers)


MULTI_DSPRITES = ImageDataset(
    name="multi_dsprites", title="Multi-dSprites", native=mds.IMAGE_SIZE, max_objects=mds.MAX_OBJECTS,
    read=_read_mds, sizes={split: n for split, (_, n) in mds.SPLITS.items()},
    spec=ModelSpec(channels=32, slot_dim=64, mlp_hidden=128, n_slots=mds.MAX_OBJECTS + 1),
    generated_variants=tuple(mds.VARIANTS), real_variants=MDS_VARIANTS, paper=PAPER_TABLE3,
    paper_label="Table 3, mean ± std of 5 seeds", budgets=MULTI_DSPRITES_BUDGETS, config=MultiDspritesConfig,
    samples=_mds_samples)
CLEVRTEX = ImageDataset(
    name="clevrtex", title="ClevrTex", native=clevrtex.IMAGE_SIZE, max_objects=clevrtex.MAX_OBJECTS,
    read=_read_clevrtex, sizes={split: n for split, (_, n) in clevrtex.SPLITS.items()},
    spec=ModelSpec(channels=64, slot_dim=128, mlp_hidden=256, n_slots=clevrtex.MAX_OBJECTS + 1),
    generated_variants=("full",), real_variants=CLEVRTEX_VARIANTS, paper=PAPER_TABLE4,
    paper_label="Table 4, mean ± std of 5 seeds", budgets=CLEVRTEX_BUDGETS, config=ClevrTexConfig,
    samples=_clevrtex_samples)
DATASETS = {ds.name: ds for ds in (MULTI_DSPRITES, CLEVRTEX)}
TASKS = {name: make_task(ds) for name, ds in DATASETS.items()}
