"""Importing the core imports no deep-learning framework."""

import subprocess
import sys


def test_core_import_is_framework_free():
    code = (
        "import sys, tfree_core; "
        "bad = [m for m in ('torch', 'jax', 'tensorflow', 'keras') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"tfree_core imported {result.stdout.strip()}"


def test_version():
    import tfree_core

    assert tfree_core.__version__.count(".") == 2
