"""Random-objects detection (paper Sec. 5.1, Table 1, App. F.1): ``python -m tasks.random_objects``."""
from .data import RandomObjects, make_split
from .experiment import BUDGETS, PAPER_TABLE1, TASK, VARIANTS, RandomObjectsConfig, format_table
from .model import DEFAULT_COSTS, ModelConfig, RandomObjectsModel

__all__ = [
    "RandomObjects",
    "make_split",
    "ModelConfig",
    "RandomObjectsModel",
    "DEFAULT_COSTS",
    "RandomObjectsConfig",
    "BUDGETS",
    "format_table",
    "PAPER_TABLE1",
    "VARIANTS",
    "TASK",
]
