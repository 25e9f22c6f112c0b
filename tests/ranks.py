"""Run a worker script on two Gloo ranks in fresh processes (test helper).

``two_ranks(source, tmp_path, timeout=..., **env)`` writes ``source`` (a ``str.format``
template that may use ``{tests}``, ``{store}`` and ``{result}``, plus the keys of
``fields``) to ``tmp_path``, runs it as ``python worker.py RANK`` for ranks 0 and 1 with
one OpenMP thread, asserts both exit 0 (their output in the message) and returns the
path of the result file rank 0 writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def two_ranks(source: str, tmp_path: Path, *, timeout: float = 180,
              env: dict[str, str] | None = None, **fields: str) -> Path:
    result = tmp_path / "result.pt"
    script = tmp_path / "worker.py"
    script.write_text(source.format(tests=str(TESTS), store=str(tmp_path / "store"),
                                    result=str(result), **fields))
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    procs = [subprocess.Popen([sys.executable, str(script), str(rank)], env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    return result
