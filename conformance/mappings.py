"""Keep a long-lived process below the kernel's limit on memory mappings.

Every program JAX compiles maps its code into the process (about 60 mappings for one loss
and gradient) and keeps it until JAX's caches are cleared. A process that compiles
thousands of programs (a conformance worker, the test suite) passes ``vm.max_map_count``
(65 530 by default); the next mmap then fails ("LLVM compilation error: Cannot allocate
memory") and the process dies with SIGSEGV.
"""

from __future__ import annotations

import os
import sys

__all__ = ["MAPS_LIMIT", "relieve"]

MAPS_LIMIT = 25_000
_MAPS = "/proc/self/maps"


def relieve(limit: int = MAPS_LIMIT) -> bool:
    """Clear JAX's compilation caches when this process holds more than ``limit`` memory
    mappings (Linux; elsewhere nothing). Returns whether it cleared them."""
    jax = sys.modules.get("jax")
    if jax is None or not os.path.exists(_MAPS):
        return False
    with open(_MAPS) as maps:
        if sum(1 for _ in maps) <= limit:
            return False
    jax.clear_caches()
    return True
