"""Ratio benchmarks of the loss + gradient: ``python -m benchmarks`` (see ``__main__``).

Per framework, ``bench_<framework>.variants(n, d, ...)`` returns the candidates timed side by
side (tfree eager, compiled and tiled; the framework's plain autodiff of the formula, eager
and compiled; the floor of three matrix products; the peer library where it applies);
``_harness`` times them interleaved and measures their peak memory in child processes.
"""
