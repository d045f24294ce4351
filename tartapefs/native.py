"""Which path runs the per-member hot loops: compiled (``tartapefs._native``) or pure Python.

The C extension is optional. The pure-Python modules are the reference: the
compiled path gives the same bytes and raises the same errors, and the tests
hold the two to each other. The compiled path is used when the extension was
built (a C compiler and the Python headers at install time) and
``TARTAPEFS_PURE`` is not set to something other than ``0``; ``ACTIVE`` says
which path this process runs, ``tartape --version`` shows it.
"""

from __future__ import annotations

import os
from types import ModuleType

#: The interface number the Python code expects of the extension (csrc/module.c,
#: TT_ABI); a build of other sources, as a stale in-place build can be, is not used.
ABI = 6


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("TARTAPEFS_PURE", "") not in ("", "0"):
        return None, "pure Python (TARTAPEFS_PURE is set)"
    try:
        from . import _native
    except ImportError:
        return None, "pure Python (the C extension is not built)"
    from .index import ROW_COLUMNS

    if getattr(_native, "ABI", None) != ABI or _native.ROW_COLUMNS != ROW_COLUMNS:
        return None, "pure Python (the C extension is out of date: reinstall tartapefs)"
    return _native, "compiled (C extension)"


#: The extension module, or None when the pure-Python path runs.
module, ACTIVE = _load()
