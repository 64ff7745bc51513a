"""``python -m tasks.multi_dsprites``: the object-discovery task on Multi-dSprites (Table 3); see
``tasks.object_discovery``. Trains SA, SA-SH and SA-MESH (``--variant sa-emd`` adds SA-EMD)."""
import functools
import sys

from ..object_discovery import command

main = functools.partial(command, "multi_dsprites")

if __name__ == "__main__":
    sys.exit(main())
