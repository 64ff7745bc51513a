"""CLEVR object property prediction (Sec. 5.2, Tables 2 and 6, App. F.2): the data (generator and real-format
loader), the set-prediction model and the experiment, ``python -m tasks.clevr``."""
from .data import (COORD_SCALE, DSPN_CLASSES, GENERATOR_VERSION, IMAGE_SIZE, MAX_OBJECTS, SET_PREDICTION_LAYOUT,
                   SET_PREDICTION_SLICES, SET_TARGET_DIM, SPLITS, TARGET_DIM, decode_scenes, encode_scenes,
                   generate_clevr, load_clevr, read_clevr, resize_images, scenes_to_targets, set_prediction_targets,
                   write_clevr_tree)
from .experiment import (BUDGETS, PAPER_OTHERS, PAPER_TABLE2, PAPER_TABLE6, TASK, VARIANTS, ClevrConfig, ClevrSet,
                         average_precisions, load_split)
from .model import ClevrModelConfig, ClevrSetModel

__all__ = [
    "GENERATOR_VERSION", "IMAGE_SIZE", "MAX_OBJECTS", "TARGET_DIM", "DSPN_CLASSES", "COORD_SCALE", "SPLITS",
    "scenes_to_targets", "generate_clevr", "read_clevr", "load_clevr", "write_clevr_tree", "encode_scenes",
    "decode_scenes", "SET_PREDICTION_LAYOUT", "SET_PREDICTION_SLICES", "SET_TARGET_DIM", "set_prediction_targets",
    "resize_images",
    "ClevrModelConfig", "ClevrSetModel",
    "ClevrConfig", "ClevrSet", "TASK", "BUDGETS", "VARIANTS", "PAPER_TABLE2", "PAPER_TABLE6", "PAPER_OTHERS",
    "load_split", "average_precisions",
]
