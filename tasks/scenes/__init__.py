"""Shared scene-data code for the image and video experiments (CLEVR, Multi-dSprites, ClevrTex, CLEVRER).

- ``SceneData``: the typed record every generator and real-format reader returns (records.py).
- ``cached``: the versioned, checksummed on-disk cache for deterministic builds (cache.py).
- ``save_grid``: PNG grids of samples with masks overlaid, for each task's ``show`` entry point (show.py).
- ``MissingDataError`` / ``DataFormatError`` and ``require_dir`` / ``require_file``: errors naming the file.
- ``tasks.scenes.tfrecord`` (imported on demand): TFRecord + tf.train.Example reader/writer without TensorFlow.
"""
from .cache import CacheWarning, cache_paths, cached, default_cache_dir
from .records import DataFormatError, MissingDataError, SceneData, require_dir, require_file
from .show import colorize_masks, overlay_masks, save_grid, show_parser

__all__ = [
    "SceneData", "MissingDataError", "DataFormatError", "require_dir", "require_file",
    "cached", "cache_paths", "default_cache_dir", "CacheWarning",
    "save_grid", "overlay_masks", "colorize_masks", "show_parser",
]
