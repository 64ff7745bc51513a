"""CLEVRER-S / CLEVRER-L two-frame video data (Sec. 5.4, App. F.4): generator (generate.py), real-data
reader (real.py) and the common entry point ``load_clevrer`` (data.py)."""
from .data import load_clevrer
from .generate import (GENERATOR_VERSION, IMAGE_SIZE, MAX_OBJECTS, count_growth_rate, generate_clevrer,
                       simulate_videos, visible_counts)
from .real import OFFICIAL_SPLITS, VARIANT_FRAMES, load_clevrer_real, official_video_ids

__all__ = ["load_clevrer", "generate_clevrer", "simulate_videos", "count_growth_rate", "visible_counts",
           "load_clevrer_real", "official_video_ids", "OFFICIAL_SPLITS", "VARIANT_FRAMES", "GENERATOR_VERSION",
           "IMAGE_SIZE", "MAX_OBJECTS"]
