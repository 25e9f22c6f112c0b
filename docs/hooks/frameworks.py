"""Load order of the frameworks for the API pages, which import every backend.

Triton's LLVM (pulled in by ``torch._dynamo`` where Triton is installed) aborts a process
that loaded TensorFlow's LLVM first ("inconsistency in registered CommandLine options");
the reverse order is fine. The API pages import ``tfree_tf`` before the torch page is
read, so torch's compiler stack is imported here, when the build starts.
"""

from __future__ import annotations

import importlib.util


def on_startup(**kwargs: object) -> None:
    if importlib.util.find_spec("torch") is not None:
        import torch._dynamo  # noqa: F401
