"""Pictures of ClevrTex: ``python -m tasks.clevrtex.show``, as ``tasks.multi_dsprites.show`` on the other data
set (the generator unless ``--data-dir`` points at the real ``clevrtex_full`` folder or its parent)."""
import functools
import sys

from ..object_discovery import show_command

main = functools.partial(show_command, "clevrtex")

if __name__ == "__main__":
    sys.exit(main())
