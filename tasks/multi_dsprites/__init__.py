"""Multi-dSprites object discovery (Sec. 5.3, App. F.3): generator and real-format readers (``data``), the Table 3
experiment (``experiment``, ``python -m tasks.multi_dsprites``) and pictures (``show``)."""
from .data import (DEFAULT_VARIANT, GENERATOR_VERSION, IMAGE_SIZE, MAX_OBJECTS, SHAPES, SPLITS, VARIANT_ENTITIES,
                   VARIANTS, entity_masks_to_index, generate_multi_dsprites, load_multi_dsprites,
                   read_multi_dsprites_hdf5, read_multi_dsprites_tfrecord)

__all__ = [
    "IMAGE_SIZE", "MAX_OBJECTS", "SHAPES", "GENERATOR_VERSION", "SPLITS", "VARIANT_ENTITIES", "VARIANTS",
    "DEFAULT_VARIANT", "generate_multi_dsprites", "load_multi_dsprites", "read_multi_dsprites_tfrecord",
    "read_multi_dsprites_hdf5", "entity_masks_to_index",
]
