"""Table 4 of the paper: unsupervised object discovery on ClevrTex with SA, SA-SH and SA-MESH (SA-EMD opt-in;
Sec. 5.3, App. F.3): the object-discovery task (``tasks.object_discovery``) on its ClevrTex data set
(``tasks.object_discovery.datasets``, where the budgets are described)."""
from ..object_discovery.datasets import CLEVRTEX as DATASET
from ..object_discovery.datasets import CLEVRTEX_BUDGETS as BUDGETS
from ..object_discovery.datasets import CLEVRTEX_VARIANTS as DATA_VARIANTS
from ..object_discovery.datasets import PAPER_TABLE4, TASKS, ClevrTexConfig

__all__ = ["ClevrTexConfig", "TASK", "BUDGETS", "PAPER_TABLE4", "DATASET", "DATA_VARIANTS"]

TASK = TASKS["clevrtex"]
