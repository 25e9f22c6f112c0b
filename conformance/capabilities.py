"""What each backend supports: one table, from which the runner's matrix, the test
parametrisation and the docs' conformance page are derived."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capability:
    backend: str
    module: str  # the import that decides whether the backend is installed
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]  # "eager", "tiled" (chunk_size=) and, where the framework
    # compiles, "compiled" (and "tiled-compiled" where its block loop is a native one);
    # "fused": kernel="fused" (GPU kernels; on a CPU in their interpreter)
    devices: tuple[str, ...]  # devices it can run on when present
    compiled_as: str = ""


CAPABILITIES: dict[str, Capability] = {
    c.backend: c
    for c in (
        Capability("numpy", "numpy", ("float64", "float32", "float16"), ("eager", "tiled"),
                   ("cpu",)),
        Capability("array_api_strict", "array_api_strict", ("float64", "float32"),
                   ("eager", "tiled"), ("cpu",)),
        Capability("torch", "torch", ("float64", "float32", "float16", "bfloat16"),
                   ("eager", "compiled", "tiled", "fused"), ("cpu", "cuda"),
                   "torch.compile(fullgraph=True)"),
        Capability("jax", "jax", ("float64", "float32", "float16", "bfloat16"),
                   ("eager", "compiled", "tiled", "tiled-compiled", "fused"), ("cpu", "cuda"),
                   "jax.jit"),
        Capability("tensorflow", "tensorflow", ("float64", "float32", "float16", "bfloat16"),
                   ("eager", "compiled", "tiled", "tiled-compiled"), ("cpu", "cuda"),
                   "tf.function(jit_compile=True)"),
    )
}
BACKENDS = tuple(CAPABILITIES)


def capability_of(adapter: object) -> Capability:
    """The capability of an external adapter (``--adapter module:Class``), from its attributes."""
    return Capability(
        getattr(adapter, "name", "external"), "", tuple(getattr(adapter, "dtypes", ("float64",))),
        tuple(getattr(adapter, "modes", ("eager",))), tuple(getattr(adapter, "device_kinds",
                                                                     ("cpu",))))
