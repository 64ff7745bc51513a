"""``python -m tasks.clevrtex``: the object-discovery task on ClevrTex (Table 4), an alias of
``python -m tasks.multi_dsprites`` on the other data set of ``tasks.object_discovery``."""
import functools
import sys

from ..object_discovery import command

main = functools.partial(command, "clevrtex")

if __name__ == "__main__":
    sys.exit(main())
