"""CLEVR object property prediction data (Sec. 5.2, App. F.2): generator and real-format loader."""
from .data import (COORD_SCALE, DSPN_CLASSES, GENERATOR_VERSION, IMAGE_SIZE, MAX_OBJECTS, SPLITS, TARGET_DIM,
                   decode_scenes, encode_scenes, generate_clevr, load_clevr, read_clevr, scenes_to_targets,
                   write_clevr_tree)

__all__ = [
    "GENERATOR_VERSION", "IMAGE_SIZE", "MAX_OBJECTS", "TARGET_DIM", "DSPN_CLASSES", "COORD_SCALE", "SPLITS",
    "scenes_to_targets", "generate_clevr", "read_clevr", "load_clevr", "write_clevr_tree", "encode_scenes",
    "decode_scenes",
]
