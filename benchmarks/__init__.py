"""Benchmarks of pixverse_async against its local simulator: `python -m benchmarks [--quick]` (see README.md).

`PIXVERSE_ASYNC_FROM=DIR` measures the `pixverse_async` package found in DIR (an older commit's checkout, say)
with these scripts: it is imported from there before anything else imports it, so its submodules come from
there too, also in the simulator's child process (which imports this package first).
"""

import os
import sys

_package_from = os.environ.get("PIXVERSE_ASYNC_FROM")
if _package_from:
    sys.path.insert(0, _package_from)
    try:
        import pixverse_async
    finally:
        sys.path.remove(_package_from)
    if not pixverse_async.__file__ or not pixverse_async.__file__.startswith(os.path.abspath(_package_from)):
        raise RuntimeError(
            f"PIXVERSE_ASYNC_FROM={_package_from}, but pixverse_async came from {pixverse_async.__file__}"
        )
