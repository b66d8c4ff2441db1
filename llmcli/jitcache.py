"""Is numba's on-disk cache of our kernels warm? (Decides whether `run` says it is compiling.)

Every kernel is `cache=True`: numba writes an index (`*.nbi`) per cached function, beside the source
in `__pycache__`, or under NUMBA_CACHE_DIR when that is set. No index for any llmcli module means
this is the first run on this machine (or after an upgrade), when compiling takes tens of seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


def kernels_compiled() -> bool:
    locations = []
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    if cache_dir:
        locations.append(Path(cache_dir))
    locations.append(PACKAGE_ROOT)
    for root in locations:
        if root.is_dir() and next(root.rglob("*.nbi"), None) is not None:
            return True
    return False
