"""ClevrTex object discovery data (Sec. 5.3, App. F.3): textured-scene generator and real-format loader."""
from .data import (CROP_FRACTION, GENERATOR_VERSION, IMAGE_SIZE, MAX_OBJECTS, NATIVE_SIZE, SIZES, SPLITS,
                   TEX_MATERIALS, crop_and_resize, generate_clevrtex, load_clevrtex, read_clevrtex)

__all__ = [
    "GENERATOR_VERSION", "IMAGE_SIZE", "MAX_OBJECTS", "SIZES", "TEX_MATERIALS", "SPLITS", "CROP_FRACTION",
    "NATIVE_SIZE", "generate_clevrtex", "read_clevrtex", "load_clevrtex", "crop_and_resize",
]
