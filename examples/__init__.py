"""Runnable experiments with the temperature-free loss (need the ``examples`` extra:
scikit-learn and matplotlib).

- ``python -m examples.temperature_sweep``: the temperature-free loss against InfoNCE over a
  range of temperatures, on scikit-learn's handwritten digits (see ``docs/experiments.md``).
"""
