"""A deliberately broken implementation, to show that the conformance runner catches it:
the core's loss off by one part in a thousand, and one gradient with its sign flipped."""

from __future__ import annotations

from conformance.adapters import CoreAdapter


class Broken(CoreAdapter):
    dtypes = ("float64", "float32")
    modes = ("eager",)

    def __init__(self) -> None:
        super().__init__("numpy")
        self.name = "broken"

    def run(self, case, dtype, mode, device):
        loss, grads = super().run(case, dtype, mode, device)
        if case.layout == "nt_xent":
            grads["z2"] = -grads["z2"]
        return loss * (1 + 1e-3), grads
