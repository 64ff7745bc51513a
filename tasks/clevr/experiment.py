"""Tables 2 and 6 of the paper: CLEVR object property prediction with SA, SA-SH, SA-EMD and SA-MESH (Sec. 5.2,
App. F.2, App. G), as a spec of the shared runner (``tasks.runner``).

Data: generated CLEVR scenes (``tasks.clevr.data``, the default) or CLEVR v1.0 (``data_dir``: its train split
for training and its val split for evaluation, since the test split has no scenes). The whole 480 x 320
frame is resized bilinearly to 128 x 128 (``image_size`` resizes that again), scaled to [-1, 1]. Each object
is 19 numbers (``data.set_prediction_targets``): coordinates (x + 3) / 6, one-hot size, material, shape and
colour, and 1 for a real object; scenes are padded to 10 objects with zero rows. The training and evaluation
sets are the same for every seed; the seed fixes the initial parameters and the data order.

Loss: the Huber loss of the Hungarian-matched (prediction, target) pairs, every slot matched to a real or a
padding object (``slots.hungarian_huber_loss``; Locatello et al. sum over the 10 pairs, we average). Metric:
``slots.clevr_average_precision`` (DSPN's definition) at distance thresholds inf, 1, 0.5, 0.25, 0.125 and
0.0625 in CLEVR units (coordinate differences scaled back by 6), ranked by the "real object" output, in %.

Budgets: "paper" is the set-prediction schedule of Locatello et al. (batch 512, 150k steps, Adam 4e-4, 1k
warm-up steps, rate x 0.5^(step / 50k)) at 128 x 128 on 70,000 training and 15,000 evaluation images: for a
GPU. "cpu" (the default) is a reduced run sized for a 2-core CPU machine (see ``BUDGETS``).

Known limits: generated scenes are an approximation of CLEVR's renders (``tasks.clevr.data``); at the "cpu"
budget the models are far from converged, so the figures are not comparable with the paper's in size; a split
is held in memory as uint8 images (70,000 at 128 x 128: 3.4 GB, and about twice that while it is loaded); a
real split is checked when it is first read and cached, not again on later runs that hit the cache.
"""
import math
from dataclasses import dataclass

import torch

from slots import CLEVR_AP_THRESHOLDS, clevr_average_precision, hungarian_huber_loss, native_bf16

from ..options import OTOptions, option
from ..runner import Budget, Data, Metric, Report, Task
from .data import SET_PREDICTION_LAYOUT, SET_PREDICTION_SLICES, ClevrSet, load_split
from .model import ClevrModelConfig, ClevrSetModel

__all__ = ["ClevrConfig", "ClevrSet", "TASK", "BUDGETS", "VARIANTS", "PAPER_TABLE2", "PAPER_TABLE6",
           "PAPER_OTHERS", "load_split", "average_precisions"]

VARIANT_NAMES = {"sa": "SA", "sa-sh": "SA-SH", "sa-emd": "SA-EMD", "sa-mesh": "SA-MESH"}
VARIANTS = tuple(VARIANT_NAMES)
METRICS = tuple(Metric(f"ap_{t:g}", f"AP{'∞' if math.isinf(t) else f'{t:g}'}", fmt=".2f", paper_fmt=".1f")
                for t in CLEVR_AP_THRESHOLDS)
_KEYS = [m.key for m in METRICS]


def _row(*cells) -> dict:
    return {k: c for k, c in zip(_KEYS, cells) if c is not None}


# The paper's figures, not ours: AP in %, (mean, standard deviation) over 5 seeds, and training hours.
PAPER_TABLE2 = {  # with implicit differentiation (the dagger rows)
    "sa": _row((94.3, 0.4), (85.7, 1.6), (77.2, 1.5), (53.1, 2.7), (16.7, 1.8), (4.0, 0.7)),
    "sa-sh": _row((98.9, 0.2), (97.7, 0.5), (95.2, 0.9), (83.3, 0.8), (38.5, 2.0), (10.0, 1.4)),
    "sa-emd": _row((99.3, 0.3), (98.1, 0.4), (95.9, 0.8), (85.8, 1.1), (42.0, 2.0), (11.4, 1.3)),
    "sa-mesh": _row((99.4, 0.1), (99.2, 0.2), (98.9, 0.2), (91.1, 1.1), (47.6, 0.8), (12.5, 0.4)),
}
PAPER_TABLE6 = {  # without implicit differentiation (App. G)
    "sa": _row((89.1, 1.2), (85.7, 1.0), (73.3, 1.2), (35.4, 1.5), (9.0, 0.8), (2.0, 0.3)),
    "sa-sh": _row((95.6, 1.0), (94.0, 1.1), (84.5, 1.7), (41.3, 3.0), (10.4, 0.7), (2.5, 0.4)),
    "sa-emd": _row((99.2, 0.2), (98.7, 0.4), (97.0, 0.8), (82.4, 1.2), (34.0, 2.2), (8.3, 0.9)),
    "sa-mesh": _row((99.2, 0.3), (99.1, 0.3), (98.8, 0.5), (88.3, 0.8), (40.8, 1.0), (10.6, 0.3)),
}
PAPER_OTHERS = {  # the rows both tables copy from other papers
    "iDSPN (Zhang et al., 2022)": _row((98.8, 0.5), (98.5, 0.6), (98.2, 0.6), (95.8, 0.7), (76.9, 2.5), (32.3, 3.9)),
    "SA original (Locatello et al., 2020)": _row((94.3, 1.1), (86.7, 1.4), (56.0, 3.6), (10.8, 1.7), (0.9, 0.2), None),
}
PAPER_HOURS = {True: {"sa": 2.2, "sa-sh": 2.3, "sa-emd": 9.3, "sa-mesh": 2.4},
               False: {"sa": 2.4, "sa-sh": 2.5, "sa-emd": 9.7, "sa-mesh": 2.5}}

BUDGETS = {
    # The paper's schedule shrunk: the rate halves three times over the run, as 50k of 150k steps.
    "cpu": Budget(steps=3_600, batch_size=64, lr=4e-4, warmup_steps=200, decay_steps=1_200, eval_every=400,
                  ckpt_every=200, overrides={"image_size": 64, "n_train": 10_000, "n_test": 1_000},
                  note="64 x 64 images, 10,000 training and 1,000 evaluation scenes: sized for all four "
                       "variants within 2 hours on a 2-core CPU"),
    "paper": Budget(steps=150_000, batch_size=512, lr=4e-4, warmup_steps=1_000, decay_steps=50_000,
                    eval_every=5_000, ckpt_every=1_000,
                    note="Locatello et al.'s set-prediction schedule at 128 x 128, for a GPU"),
}


@dataclass
class ClevrConfig(OTOptions):
    """Data and model options of the CLEVR experiment (each field's help says what it is). ``bf16`` None picks
    bfloat16 where the hardware has it natively (``slots.native_bf16``) and is replaced by the choice."""

    data_dir: str | None = option(None, "folder holding CLEVR v1.0 (train split for training, val for "
                                        "evaluation); none: generated scenes")
    n_train: int = option(70_000, "training images (the first of the train split)", minimum=1)
    n_test: int = option(15_000, "evaluation images (the first of the val split)", minimum=1)
    image_size: int = option(128, "input image side, a multiple of 4 (the paper's: 128)", minimum=8)
    implicit_grad: bool = option(True, "implicit differentiation of the slots (Table 2; off: Table 6)")
    bf16: bool | None = option(None, "convolutions under bfloat16 autocast: auto = where the hardware has native "
                                     "bfloat16", choices={"auto": None, "on": True, "off": False})
    eval_batch: int = option(250, "images per forward pass during evaluation", minimum=1)

    def __post_init__(self):
        super().__post_init__()
        if self.bf16 is None:
            self.bf16 = native_bf16()
        self.model("sa-mesh")  # validates the model options

    def model(self, variant: str) -> ClevrModelConfig:
        """The model configuration of one variant."""
        return ClevrModelConfig.of(variant, self.implicit_grad, self.ot_config(variant), n_iters=self.n_iters,
                                   cost=self.cost, image_size=self.image_size, bf16=self.bf16)

    def model_config(self, variant: str) -> dict:
        return self.model(variant).to_dict()

    def run_folder(self, budget: str) -> str:
        return f"runs/clevr/{budget}{'-real' if self.data_dir else ''}{'' if self.implicit_grad else '-no-implicit'}"


_PARTS = SET_PREDICTION_SLICES
_ATTRIBUTES = [name for name in SET_PREDICTION_LAYOUT if name not in ("coords", "real")]


def average_precisions(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """AP in % at every threshold of ``slots.CLEVR_AP_THRESHOLDS`` (keys "ap_inf", "ap_1", ... "ap_0.0625").

    Args:
        pred: (N, m, 19) predictions. target: (N, K, 19) targets (``SET_PREDICTION_LAYOUT``; real objects
            have a last entry of 1). Attributes are the argmax of each one-hot part; the confidence is the
            last entry; coordinate differences are scaled by 6 (back to CLEVR units).
    """
    def attrs(x):
        return torch.stack([x[..., _PARTS[name]].argmax(-1) for name in _ATTRIBUTES], -1)  # (N, ., 4)

    ap = clevr_average_precision(pred[..., _PARTS["coords"]], attrs(pred), pred[..., _PARTS["real"]].squeeze(-1),
                                 target[..., _PARTS["coords"]], attrs(target), target[..., _PARTS["real"]].squeeze(-1) > 0.5,
                                 coord_scale=6.0)
    return {f"ap_{t:g}": 100 * ap[t] for t in CLEVR_AP_THRESHOLDS}


def _load_train(cfg: ClevrConfig, seed: int) -> ClevrSet:
    return load_split(cfg, "train")


def _load_test(cfg: ClevrConfig) -> ClevrSet:
    return load_split(cfg, "val")


def _prepare(cfg: ClevrConfig, progress: bool) -> None:
    for split in ("val", "train"):
        load_split(cfg, split, progress)


def _build(cfg: ClevrConfig, variant: str) -> ClevrSetModel:
    return ClevrSetModel(cfg.model(variant))


def _loss(model, batch) -> torch.Tensor:
    return hungarian_huber_loss(model(batch["image"]), batch["target"])


def _evaluate(model, test: ClevrSet, cfg: ClevrConfig) -> dict:
    device = next(model.parameters()).device
    preds = []
    for start in range(0, len(test), cfg.eval_batch):
        batch = test[torch.arange(start, min(start + cfg.eval_batch, len(test)))]
        preds.append(model(batch["image"].to(device)).cpu())
    return average_precisions(torch.cat(preds), test.targets)


def _paper(cfg: ClevrConfig) -> dict:
    return {**(PAPER_TABLE2 if cfg.implicit_grad else PAPER_TABLE6), **PAPER_OTHERS}


def _paper_time(cfg: ClevrConfig) -> dict:
    return PAPER_HOURS[cfg.implicit_grad]


def _paper_label(cfg: ClevrConfig) -> str:
    if cfg.implicit_grad:
        return "Table 2 (with implicit differentiation, the dagger rows), AP in %, mean ± std of 5 seeds"
    return "Table 6 (without implicit differentiation), AP in %, mean ± std of 5 seeds"


def _describe(cfg: ClevrConfig, budget: Budget, seeds: int) -> str:
    source = f"CLEVR v1.0 from {cfg.data_dir}" if cfg.data_dir else "generated CLEVR scenes"
    implicit = "on (Table 2)" if cfg.implicit_grad else "off (Table 6)"
    return (f"CLEVR property prediction: AP in % (higher is better) on {cfg.n_test:,} evaluation images; {source}, "
            f"{cfg.n_train:,} training images at {cfg.image_size} x {cfg.image_size}; {budget.steps:,} steps of "
            f"batch {budget.batch_size}, learning rate {budget.lr:g}; implicit differentiation {implicit}; "
            f"convolutions in {'bfloat16' if cfg.bf16 else 'float32'}; mean ± std over {seeds} seed(s).")


TASK = Task(
    name="clevr", config=ClevrConfig, variants=VARIANT_NAMES, default_variants=VARIANTS,
    data=Data(load_train=_load_train, load_test=_load_test, prepare=_prepare), build=_build, loss=_loss,
    evaluate=_evaluate,
    report=Report(metrics=METRICS, paper=_paper, paper_label=_paper_label, describe=_describe, aggregate="mean",
                  plot_file="ap_vs_steps.png", paper_time=_paper_time),
    budgets=BUDGETS, default_budget="cpu", model_kind="clevr_set_model")
