"""pyroute2, imported on first use.

pyroute2 is ~160 modules and ~10 MiB of the daemon's memory; a daemon whose
containers never use a bridge network never needs it (startup's reconcile
reads /sys/class/net first and calls netlink only for links to remove). The
module object is importlib's LazyLoader: its first attribute access imports
the real package.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyroute2
else:

    def _lazy(name: str):
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError(f"{name} is not installed (pip install pyroute2)")
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    pyroute2 = _lazy("pyroute2")

__all__ = ["pyroute2"]
