"""``python -m tasks.clevrtex``: the ClevrTex object-discovery experiment (Table 4) on the shared runner.

Trains SA, SA-SH and SA-MESH (``--variant sa-emd`` adds SA-EMD) at the CPU budget (``--budget paper``: the
paper's schedule, for a GPU); see ``tasks.clevrtex.experiment`` for the budgets, ``tasks.runner`` for the
run folder and ``tasks.clevrtex.show --run`` for the pictures.
"""
import functools
import sys

from ..object_discovery import command
from .experiment import TASK

main = functools.partial(command, TASK)

if __name__ == "__main__":
    sys.exit(main())
