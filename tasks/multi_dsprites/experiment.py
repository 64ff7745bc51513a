"""Table 3 of the paper: unsupervised object discovery on Multi-dSprites with SA, SA-SH and SA-MESH (SA-EMD
opt-in; Sec. 5.3, App. F.3, App. H): the object-discovery task (``tasks.object_discovery``) on its
Multi-dSprites data set (``tasks.object_discovery.datasets``, where the budgets are described)."""
from ..object_discovery.datasets import MULTI_DSPRITES as DATASET
from ..object_discovery.datasets import MULTI_DSPRITES_BUDGETS as BUDGETS
from ..object_discovery.datasets import PAPER_TABLE3, TASKS, MultiDspritesConfig

__all__ = ["MultiDspritesConfig", "TASK", "BUDGETS", "PAPER_TABLE3", "DATASET"]

TASK = TASKS["multi_dsprites"]
