"""The GPU run of the temperature-free loss, step by step (``benchmarks/gpu.sh`` calls these;
with ``--dry`` each runs the same code on the CPU at tiny sizes).

``python -m benchmarks.bench_gpu STEP --out DIR [--dry] [--budget SECONDS]``, one process
per step (Triton's and TensorFlow's LLVM builds abort a process that loads both; JAX and
PyTorch would compete for the GPU's memory):

* ``env`` → ``environment.json``: the GPU (name, driver, memory, compute capability, from
  ``nvidia-smi``), the CUDA and cuDNN of the PyTorch build, library versions, git commit.
* ``kernels`` → ``kernels.json``: the fused kernels (``kernel="fused"``: Triton for
  ``tfree_torch``, Pallas for ``tfree_jax``, each backend in a child process), compiled on
  the GPU and run once per case (pairs, symmetric pairs; float32, bfloat16). Measured: the
  relative difference of the loss and of both gradients (``‖a - b‖ / ‖b‖``) from the
  portable path (``kernel="portable"``) on the same inputs, and the first call's time
  (compilation included). On a CPU the kernels run in Triton's / Pallas' interpreter and
  their compilation is reported as skipped.
* ``bench`` → ``benchmark.json`` and ``benchmark.md``: loss + gradient (``backward()``) of
  ``tfree_torch.info_nce(q, k)`` (pairs layout) at ``N × D`` (65 536 × 512 on a GPU) in
  float32 and bfloat16, as shipped (``chunk_size="auto"``), untiled, tiled and fused,
  against the plain PyTorch formula (``bench_torch.plain_loss``: cross-entropy of
  ``2·atanh(clamp(cos))``, autograd) where it fits the GPU's memory, and Inf-CL's
  ``cal_inf_loss`` (a different loss, the CLIP logits ``cos/τ``) where ``inf_cl`` imports.
  Time: the median of ``--repeats`` (3) interleaved calls after one warm-up call each
  (``_harness.interleaved``; every call ends in ``torch.cuda.synchronize()``). Throughput:
  ``8·N²·D`` floating-point operations per loss + gradient (four ``N × N × D`` matrix
  products: ``S``, ``S`` again in the backward of a tiled or fused pass, ``G·U_k``,
  ``Gᵀ·U_q``), counted so for every variant whatever it really does, divided by that
  median. Peak memory: the CUDA allocator's peak above what was allocated before the
  warm-up call. Values: before timing, each variant's loss and gradients at ``--check-n``
  rows against the float64 plain formula on the same (rounded) inputs; at full size, each
  loss against ``tfree`` float32's.
* ``verdict`` → ``summary.json`` and the one-line verdict, from the steps' files and the
  exit statuses ``gpu.sh`` passes (``--step name=rc:seconds:budget``).

What a step cannot do where it runs is written as ``{"status": "skipped", "reason": ...}``,
never left out. Each file is rewritten whole after every stage, so a step stopped at its
time budget leaves what it had finished.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
TAU = 0.07
"""Inf-CL's temperature here (CLIP's initial one): its loss is the cross-entropy of ``cos/τ``."""


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of one run."""

    n: int  # benchmark rows (queries = keys)
    d: int  # features
    check_n: int  # rows of the value checks against the float64 formula
    kernel_n: int  # rows of the fused-kernel checks


REAL = Sizes(n=65536, d=512, check_n=8192, kernel_n=8192)
DRY = Sizes(n=256, d=32, check_n=256, kernel_n=256)
REPEATS, WARMUP = 3, 1
DTYPES = ("float32", "bfloat16")

TOLERANCE = {"float32": {"loss": 1e-5, "grad": 1e-4}, "bfloat16": {"loss": 2e-2, "grad": 5e-2}}
"""Relative errors a checked value may have (loss: ``|a - b| / |b|``; gradients:
``‖a - b‖ / ‖b‖``). bfloat16 keeps 8 bits: the results, stored in bfloat16, differ from the
float64 formula by a few 2⁻⁸; float32 matrix products here run at IEEE precision (no TF32)."""

FULL_SIZE_RTOL = {"float32": 1e-4, "bfloat16": 2e-2}
"""Full-size loss against ``tfree`` float32 on the float32 inputs: float32 sums of ``N``
terms in another order, or the bfloat16 rounding of the inputs and of the result."""

PACKAGES = ("tfree", "numpy", "torch", "triton", "jax", "jaxlib", "jax-cuda12-plugin",
            "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt", "tensorflow",
            "tensorflow-cpu", "keras", "array-api-compat", "inf-cl")


def skipped(reason: str) -> dict[str, str]:
    """The record of something that did not run here, with why."""
    return {"status": "skipped", "reason": reason}


def flops(n: int, d: int) -> float:
    """Floating-point operations counted per loss + gradient: ``8·N²·D``."""
    return 8.0 * n * n * d


def tflops(n: int, d: int, seconds: float) -> float:
    """``8·N²·D / seconds`` in TFLOP/s."""
    return flops(n, d) / seconds / 1e12


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` whole, through a temporary file: a step killed at its budget leaves
    the last complete version, never half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def rel_err(a: Any, b: Any) -> float:
    """``‖a - b‖ / ‖b‖`` in float64 (``|a - b| / |b|`` for scalars); ``inf`` if ``b`` is 0
    and ``a`` is not, or anything is not finite."""
    import numpy as np

    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(a64)) and np.all(np.isfinite(b64))):
        return math.inf
    diff, scale = float(np.linalg.norm(a64 - b64)), float(np.linalg.norm(b64))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class Budget:
    """A step's time budget: how much is left, and whether a stage fits in it."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def spent(self, reserve: float = 0.0) -> str:
        """Why not to start something expected to take ``reserve`` seconds ("" if it fits)."""
        if self.left() > reserve:
            return ""
        return f"time budget of {self.seconds:.0f} s spent ({self.elapsed():.0f} s elapsed)"


# --------------------------------------------------------------------------- environment


def _nvidia_smi() -> list[dict[str, str]] | dict[str, str]:
    """One record per GPU from ``nvidia-smi``; a skip record where there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return skipped("nvidia-smi not found (no NVIDIA driver here)")
    fields = ("name", "driver_version", "memory.total", "compute_cap", "pci.bus_id")
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError) as err:
        return skipped(f"nvidia-smi failed: {err}")
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in out.splitlines() if line.strip()]


def _driver_cuda() -> str | dict[str, str]:
    """The CUDA version the driver supports (``nvidia-smi``'s banner; no query field has it)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return skipped("nvidia-smi not found (no NVIDIA driver here)")
    try:
        banner = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
    except (subprocess.SubprocessError, OSError) as err:
        return skipped(f"nvidia-smi failed: {err}")
    found = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return found.group(1) if found else skipped("no 'CUDA Version' in nvidia-smi's banner")


def _torch_cuda() -> dict[str, Any]:
    """CUDA as the PyTorch build sees it (the toolkit it was built with, not the driver's)."""
    try:
        import torch
    except ImportError:
        return skipped("torch is not installed")
    info: dict[str, Any] = {"torch": torch.__version__, "built_with_cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(),
                            "float32_matmul_precision": torch.get_float32_matmul_precision(),
                            "allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if not torch.cuda.is_available():
        info["device"] = skipped("torch sees no CUDA device")
        return info
    props = torch.cuda.get_device_properties(0)
    info["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 2),
                      "multiprocessors": props.multi_processor_count,
                      "count": torch.cuda.device_count()}
    return info


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (subprocess.SubprocessError, OSError) as err:
        return skipped(f"git: {err}")


def environment(dry: bool) -> dict[str, Any]:
    """What the results were measured on."""
    return {
        "mode": "dry (CPU, tiny sizes)" if dry else "gpu",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpus": _nvidia_smi(),
        "driver_cuda": _driver_cuda(),
        "cuda": _torch_cuda(),
        "versions": {p: version_of(p) or "not installed" for p in PACKAGES},
        "git": _git(),
        "env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "TRITON_INTERPRET",
                                            "XLA_PYTHON_CLIENT_PREALLOCATE", "OMP_NUM_THREADS")
                if k in os.environ},
    }


# --------------------------------------------------------------------------- fused kernels


def _kernel_case(name: str, dtype: str, n: int, d: int, fused: tuple, portable: tuple
                 ) -> dict[str, Any]:
    """Compare ``(loss, grad_q, grad_k, seconds)`` of the fused and the portable path."""
    tol = TOLERANCE[dtype]
    loss_err = rel_err(fused[0], portable[0])
    grad_err = max(rel_err(fused[1], portable[1]), rel_err(fused[2], portable[2]))
    ok = loss_err <= tol["loss"] and grad_err <= tol["grad"]
    return {"case": name, "dtype": dtype, "n": n, "d": d, "status": "ok" if ok else "failed",
            "loss_fused": fused[0], "loss_portable": portable[0], "loss_rel_err": loss_err,
            "grad_rel_err": grad_err, "tolerance": tol, "first_call_s": round(fused[3], 4),
            "portable_s": round(portable[3], 4)}


def _cases(run: Callable[[bool, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (layout, dtype) case of ``run``; an exception fails its case, not the step (a
    kernel that does not compile on this GPU is what the step is there to show)."""
    out = []
    for symmetric in (False, True):
        for dtype in DTYPES:
            name = "pairs symmetric" if symmetric else "pairs"
            try:
                out.append(run(symmetric, dtype))
            except Exception as err:
                out.append({"case": name, "dtype": dtype, "status": "failed",
                            "reason": describe(err)})
    return out


def torch_kernels(dry: bool, n: int, d: int) -> dict[str, Any]:
    """``tfree_torch.info_nce(..., kernel="fused")`` (Triton) against ``kernel="portable"``."""
    import tfree_torch
    import torch
    from tfree_torch import _triton

    if not _triton.available():
        return skipped("Triton is not installed (pip install 'tfree[fused]')")
    if dry:
        if not _triton.interpreting():
            return skipped("no CUDA device, and TRITON_INTERPRET=1 was not set before Triton "
                           "was imported")
        device = "cpu"
        compiled: dict[str, Any] = skipped(
            "no CUDA device: the kernels ran in Triton's CPU interpreter instead")
    else:
        if not torch.cuda.is_available():
            return skipped("torch sees no CUDA device")
        device = "cuda"
        compiled = {"status": "ok", "by": f"triton {version_of('triton')}",
                    "device": torch.cuda.get_device_name()}

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def once(q0: torch.Tensor, k0: torch.Tensor, symmetric: bool, kernel: str) -> tuple:
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        sync()
        start = time.perf_counter()
        loss = tfree_torch.info_nce(q, k, symmetric=symmetric, kernel=kernel)
        loss.backward()
        sync()
        seconds = time.perf_counter() - start
        assert q.grad is not None
        assert k.grad is not None
        return (float(loss.detach()), q.grad.double().cpu().numpy(),
                k.grad.double().cpu().numpy(), seconds)

    def run(symmetric: bool, dtype: str) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(1 + symmetric)
        q0, k0 = (torch.randn(n, d, generator=gen).to(device, getattr(torch, dtype))
                  for _ in range(2))
        fused = once(q0, k0, symmetric, "fused")  # first: its time includes compilation
        portable = once(q0, k0, symmetric, "portable")
        return _kernel_case("pairs symmetric" if symmetric else "pairs", dtype, n, d, fused,
                            portable)

    cases = _cases(run)
    ok = all(c["status"] == "ok" for c in cases)
    return {"status": "ok" if ok else "failed", "device": device, "compiled": compiled,
            "cases": cases}


def jax_kernels(dry: bool, n: int, d: int) -> dict[str, Any]:
    """``tfree_jax.info_nce(..., kernel="fused")`` (Pallas) against ``kernel="portable"``,
    each under ``jax.jit(jax.value_and_grad(...))``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import tfree_jax

    if dry:
        device = jax.devices("cpu")[0]
        compiled: dict[str, Any] = skipped(
            "no GPU: the kernels ran in Pallas' CPU interpreter instead")
    else:
        try:
            device = jax.devices("gpu")[0]
        except RuntimeError as err:
            return skipped(f"jax sees no GPU (a CPU build of jaxlib: pip install "
                           f"'jax[cuda12]'): {err}")
        compiled = {"status": "ok", "by": f"Pallas (Triton lowering), jax {jax.__version__}",
                    "device": device.device_kind}

    def once(q: jax.Array, k: jax.Array, symmetric: bool, kernel: str) -> tuple:
        loss_fn = functools.partial(tfree_jax.info_nce, symmetric=symmetric, kernel=kernel)
        step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
        start = time.perf_counter()
        loss, (gq, gk) = jax.block_until_ready(step(q, k))
        seconds = time.perf_counter() - start
        return (float(loss), np.asarray(gq, dtype=np.float64), np.asarray(gk, dtype=np.float64),
                seconds)

    def run(symmetric: bool, dtype: str) -> dict[str, Any]:
        rng = np.random.default_rng(1 + symmetric)
        q, k = (jax.device_put(jnp.asarray(rng.standard_normal((n, d)), getattr(jnp, dtype)),
                               device) for _ in range(2))
        fused = once(q, k, symmetric, "fused")  # first: its time includes compilation
        portable = once(q, k, symmetric, "portable")
        return _kernel_case("pairs symmetric" if symmetric else "pairs", dtype, n, d, fused,
                            portable)

    cases = _cases(run)
    ok = all(c["status"] == "ok" for c in cases)
    return {"status": "ok" if ok else "failed", "device": str(device), "compiled": compiled,
            "cases": cases}


KERNEL_BACKENDS: dict[str, tuple[str, Callable[[bool, int, int], dict[str, Any]]]] = {
    "torch": ("tfree_torch", torch_kernels),
    "jax": ("tfree_jax", jax_kernels),
}


def kernels(out: Path, dry: bool, sizes: Sizes, budget: Budget) -> dict[str, Any]:
    """Run each backend's kernel check in a child process and gather ``kernels.json``."""
    import importlib.util

    report: dict[str, Any] = {"n": sizes.kernel_n, "d": sizes.d, "backends": {}}
    for backend, (package, _) in KERNEL_BACKENDS.items():
        if importlib.util.find_spec(package) is None:
            report["backends"][backend] = skipped(f"{package} is not installed")
            continue
        if budget.spent(reserve=10):
            report["backends"][backend] = skipped(budget.spent(reserve=10))
            continue
        env = dict(os.environ)
        if dry and backend == "torch":
            # read once, when Triton is first imported: only a fresh process can set it
            env["TRITON_INTERPRET"] = "1"
        cmd = [sys.executable, "-m", "benchmarks.bench_gpu", "kernel-child", "--backend",
               backend, "--n", str(sizes.kernel_n), "--d", str(sizes.d)] + (
            ["--dry"] if dry else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                                  timeout=max(budget.left() - 5, 1))
        except subprocess.TimeoutExpired:
            report["backends"][backend] = {
                "status": "failed", "reason": "did not finish within the step's time budget "
                f"({budget.seconds:.0f} s)"}
            continue
        sys.stderr.write(proc.stderr[-4000:])
        lines = proc.stdout.strip().splitlines()
        try:
            report["backends"][backend] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            report["backends"][backend] = {
                "status": "failed", "reason": f"the child exited {proc.returncode} without "
                f"a report", "stderr": proc.stderr[-2000:]}
        write_json(out / "kernels.json", report)
    ran = [b for b in report["backends"].values() if b["status"] != "skipped"]
    report["status"] = ("failed" if any(b["status"] == "failed" for b in ran)
                        else "ok" if ran else "skipped")
    write_json(out / "kernels.json", report)
    return report


# --------------------------------------------------------------------------- benchmark


@dataclass
class Impl:
    """One way to get a loss + gradient: ``make(dtype)`` gives ``loss(q, k)`` (a scalar
    tensor), ``reference`` its float64 formula; ``skip``: why it cannot run here at all,
    ``untimed``: why it is checked but not timed here. ``matrices``: ``N × N`` temporaries
    (a lower bound) for the memory estimate; ``gate``: whether a wrong value fails the run
    (the library's variants; the others are compared for information)."""

    name: str
    make: Callable[[str], Callable[..., torch.Tensor]]
    reference: Callable[..., torch.Tensor]
    skip: str = ""
    untimed: str = ""
    matrices: float = 0.0
    gate: bool = True
    full_size_compare: bool = True
    note: str = ""


def clip_loss(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The CLIP loss Inf-CL computes: cross-entropy of ``cos(q_i, k_j) / τ``."""
    import torch
    import torch.nn.functional as F

    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / TAU
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def _inf_cl(device: str, d: int) -> Impl:
    """Inf-CL's ``cal_inf_loss`` on the normalised inputs over ``τ``, where it imports."""
    import importlib.util

    def missing(_: str) -> Callable[..., torch.Tensor]:
        raise AssertionError("not run")

    name = "Inf-CL cal_inf_loss"
    note = f"a different loss: CLIP logits cos/τ, τ = {TAU}"
    if importlib.util.find_spec("inf_cl") is None:
        return Impl(name, missing, clip_loss, skip="inf_cl not installed (pip install inf-cl)",
                    gate=False, note=note)
    head_dim = next((h for h in (256, 128, 64, 32, 16) if d % h == 0), 0)
    if not head_dim:
        return Impl(name, missing, clip_loss, skip=f"D = {d} is no multiple of 16 (Inf-CL's "
                    "head_dim)", gate=False, note=note)

    def make(dtype: str) -> Callable[..., torch.Tensor]:
        import torch.nn.functional as F
        from inf_cl import cal_inf_loss

        def loss(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            # normalised here as tfree normalises inside: both time the same work
            return cal_inf_loss(F.normalize(q, dim=1) / TAU, F.normalize(k, dim=1),
                                head_dim=head_dim)

        return loss

    untimed = ("" if device == "cuda"
               else "Inf-CL's kernels are Triton's, for CUDA: not timed on a CPU")
    return Impl(name, make, clip_loss, untimed=untimed, gate=False, full_size_compare=False,
                note=f"{note}; head_dim={head_dim}; computes in float32")


def impls(device: str, n: int, d: int) -> list[Impl]:
    """The variants of the benchmark on ``device`` (``"cuda"`` or ``"cpu"``)."""
    import tfree_torch
    from tfree_torch import _triton

    from benchmarks.bench_torch import plain_loss

    chunk = max(n // 16, 16)

    def tfree(**kwargs: Any) -> Callable[[str], Callable[..., torch.Tensor]]:
        return lambda dtype: functools.partial(tfree_torch.info_nce, **kwargs)

    fused_skip, fused_untimed = "", ""
    if not _triton.available():
        fused_skip = "Triton is not installed (pip install 'tfree[fused]')"
    elif device == "cpu":
        if _triton.interpreting():
            fused_untimed = ("no CUDA device: checked in Triton's CPU interpreter, whose "
                             "timings say nothing about the kernels")
        else:
            fused_skip = "no CUDA device and TRITON_INTERPRET unset"
    return [
        Impl("tfree", tfree(), plain_loss, note='chunk_size="auto" (as shipped)'),
        Impl("tfree untiled", tfree(chunk_size=None), plain_loss, matrices=2,
             note="chunk_size=None: S kept for the backward"),
        Impl(f"tfree tiled ({chunk})", tfree(chunk_size=chunk), plain_loss,
             note=f"chunk_size={chunk}: S recomputed block by block"),
        Impl("tfree fused", tfree(kernel="fused"), plain_loss, skip=fused_skip,
             untimed=fused_untimed, note='kernel="fused": Triton, no N×N array'),
        Impl("plain PyTorch", lambda dtype: plain_loss, plain_loss, matrices=4, gate=False,
             note="autograd of cross_entropy(2·atanh(clamp(cos)))"),
        _inf_cl(device, d),
    ]


def _inputs(n: int, d: int, dtype: str, device: str, seed: int) -> tuple:
    """``(q, k)`` leaves: float32 normals rounded to ``dtype`` (the bfloat16 inputs are
    the float32 ones rounded, so full-size losses compare across dtypes)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(n, d, generator=gen).to(device) for _ in range(2))
    return tuple(x.to(getattr(torch, dtype)).requires_grad_() for x in (q, k))


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def describe(err: BaseException) -> str:
    """``Type: message``, and where it was raised when the message is empty (a bare
    ``assert`` in a peer library)."""
    text = f"{type(err).__name__}: {str(err)[:300]}"
    if not str(err):
        frames = traceback.extract_tb(err.__traceback__)
        if frames:
            last = frames[-1]
            text += f"at {Path(last.filename).name}:{last.lineno}: {last.line}"
    return text


def _free(device: str) -> None:
    """Give the memory of a failed call back (its tensors die with the exception)."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def check(impl: Impl, dtype: str, n: int, d: int, device: str) -> dict[str, Any]:
    """Loss and both gradients of ``impl`` at ``n × d`` against its float64 formula on the
    same inputs (the ``dtype`` inputs upcast)."""
    q, k = _inputs(n, d, dtype, device, seed=11)
    loss = impl.make(dtype)(q, k)
    loss.backward()
    q64, k64 = (x.detach().double().requires_grad_() for x in (q, k))
    ref = impl.reference(q64, k64)
    ref.backward()
    tol = TOLERANCE[dtype]
    loss, ref = float(loss.detach()), float(ref.detach())
    loss_err = rel_err(loss, ref)
    grad_err = max(rel_err(x.grad.double().cpu().numpy(), x64.grad.cpu().numpy())
                   for x, x64 in ((q, q64), (k, k64)))
    ok = loss_err <= tol["loss"] and grad_err <= tol["grad"]
    return {"name": impl.name, "dtype": dtype, "n": n, "d": d, "status": "ok" if ok else "failed",
            "gate": impl.gate, "loss": loss, "reference": ref,
            "loss_rel_err": loss_err, "grad_rel_err": grad_err, "tolerance": tol}


def _step(loss_fn: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor,
          device: str) -> Callable[[], torch.Tensor]:
    """One synchronised loss + gradient; returns the loss (read after the timing ends)."""

    def run() -> torch.Tensor:
        q.grad = None
        k.grad = None
        loss = loss_fn(q, k)
        loss.backward()
        _sync(device)  # the timer stops when the GPU is done, not when the launch returns
        return loss.detach()

    return run


def _memory_estimate(impl: Impl, n: int, dtype: str) -> float:
    import torch

    return impl.matrices * n * n * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def bench(out: Path, dry: bool, sizes: Sizes, repeats: int, budget: Budget) -> dict[str, Any]:
    """The checks, the warm-up probes and the interleaved timings; ``benchmark.json``/``.md``."""
    import torch

    from benchmarks._harness import interleaved

    device = "cpu" if dry else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: torch sees no CUDA device (use --dry for the CPU dry run)")
    n, d = sizes.n, sizes.d
    total_memory = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 0
    report: dict[str, Any] = {
        "config": {"n": n, "d": d, "check_n": sizes.check_n, "device": device,
                   "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                   "torch": torch.__version__, "layout": "pairs", "dry": dry,
                   "repeats": repeats, "warmup": WARMUP, "timing": "median of interleaved "
                   "synchronised calls after the warm-up", "flop_count": "8*N^2*D",
                   "flops": flops(n, d), "tolerance": TOLERANCE,
                   "full_size_rtol": FULL_SIZE_RTOL,
                   "peak_memory": "CUDA allocator peak above the inputs" if device == "cuda"
                   else skipped("CUDA allocator statistics only (no GPU)")},
        "checks": [], "results": [],
    }

    def save() -> None:
        write_json(out / "benchmark.json", report)

    variants = impls(device, n, d)
    # value checks first, small enough for the float64 formula on any device
    for impl in variants:
        for dtype in DTYPES:
            row: dict[str, Any] = {"name": impl.name, "dtype": dtype, "n": sizes.check_n,
                                   "d": d, "gate": impl.gate}
            if impl.skip or budget.spent(reserve=5):
                row.update(skipped(impl.skip or budget.spent(reserve=5)))
            else:
                try:
                    row = check(impl, dtype, sizes.check_n, d, device)
                except Exception as err:
                    # a baseline that cannot run here (Inf-CL on a CPU) is skipped, not failed
                    why = describe(err)
                    row.update(skipped(f"{impl.name} does not run on a CPU: {why}")
                               if not impl.gate and device == "cpu"
                               else {"status": "failed", "reason": why})
                _free(device)
            report["checks"].append(row)
        save()

    # full size: one warm-up call each (it also compiles and measures the peak memory)
    inputs = {dtype: _inputs(n, d, dtype, device, seed=7) for dtype in DTYPES}
    steps: dict[str, Callable[[], torch.Tensor]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for impl in variants:
        for dtype in DTYPES:
            key = f"{impl.name} [{dtype}]"
            row = {"name": impl.name, "dtype": dtype, "n": n, "d": d, "note": impl.note,
                   "gate": impl.gate}
            rows[key] = row
            report["results"].append(row)
            need = _memory_estimate(impl, n, dtype)
            if impl.skip or impl.untimed:
                row.update(skipped(impl.skip or impl.untimed))
            elif device == "cpu" and dtype != "float32":
                row.update(skipped("bfloat16 on a CPU: its timings say nothing about a GPU "
                                   "(checked above)"))
            elif device == "cuda" and need > total_memory:
                row.update(skipped(f"needs at least {need / 2**30:.0f} GiB ({impl.matrices:g} "
                                   f"N×N matrices); the GPU has {total_memory / 2**30:.0f} GiB"))
            elif budget.spent(reserve=10):
                row.update(skipped(budget.spent(reserve=10)))
            if row.get("status") == "skipped":
                continue
            step = _step(impl.make(dtype), *inputs[dtype], device)
            try:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                start = time.perf_counter()
                loss = step()
                row["first_call_s"] = round(time.perf_counter() - start, 4)
                row["loss"] = float(loss)
                if device == "cuda":
                    row["peak_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)
                steps[key] = step
            except Exception as err:
                if _is_oom(err):
                    row.update(skipped(f"out of memory at N = {n} ({str(err)[:160]})"))
                else:
                    row.update(status="failed", reason=describe(err))
            _free(device)
        save()

    # interleaved timings of the variants that ran, as many repeats as the budget allows
    first = sum(rows[key]["first_call_s"] for key in steps)
    fit = int(max(budget.left() - 15, 0) / first) if first > 0 else repeats
    run_repeats = max(min(repeats, fit), 1)
    report["config"]["repeats_run"] = run_repeats
    medians = interleaved(steps, run_repeats, warmup=0) if steps else {}
    reference = rows.get("tfree [float32]", {}).get("loss")
    for key, seconds in medians.items():
        row = rows[key]
        row.update(status="ok", seconds=seconds, ms=seconds * 1e3,
                   tflops=tflops(n, d, seconds), repeats=run_repeats)
        if not next(i for i in variants if i.name == row["name"]).full_size_compare:
            row["agrees"] = skipped("a different loss: nothing to compare with")
        elif reference is None:
            row["agrees"] = skipped("no tfree float32 loss at this size")
        else:
            err = rel_err(row["loss"], reference)
            row["loss_rel_err_vs_tfree_float32"] = err
            row["agrees"] = err <= FULL_SIZE_RTOL[row["dtype"]]
    report["verdict"] = bench_verdict(report)
    save()
    (out / "benchmark.md").write_text(markdown(report))
    return report


def bench_verdict(report: dict[str, Any]) -> str:
    """``PASS`` or ``FAIL (...)``: a gating check or variant failed or disagreed; a baseline
    that disagrees is named but does not fail the run."""
    bad = [f"check {r['name']} [{r['dtype']}]" for r in report["checks"]
           if r["status"] == "failed" and r["gate"]]
    bad += [f"{r['name']} [{r['dtype']}]" for r in report["results"]
            if r.get("status") == "failed" and r["gate"]]
    bad += [f"{r['name']} [{r['dtype']}] loss disagrees" for r in report["results"]
            if r.get("agrees") is False and r["gate"]]
    off = [f"{r['name']} [{r['dtype']}]" for r in report["checks"] + report["results"]
           if not r["gate"] and (r.get("status") == "failed" or r.get("agrees") is False)]
    line = f"FAIL ({', '.join(bad)})" if bad else "PASS"
    return line + (f"; baselines off their formula: {', '.join(off)}" if off else "")


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "–"


def markdown(report: dict[str, Any]) -> str:
    """A short table of ``benchmark.json``."""
    c = report["config"]
    lines = [
        "# GPU benchmark: loss + gradient of `tfree_torch.info_nce(q, k)`", "",
        f"N = {c['n']:,}, D = {c['d']}, pairs layout, on {c['device_name']} "
        f"(torch {c['torch']}){' — dry run on the CPU' if c['dry'] else ''}. "
        f"Median of {c.get('repeats_run', c['repeats'])} interleaved calls after "
        f"{c['warmup']} warm-up call; TFLOP/s counted as 8·N²·D = {c['flops'] / 1e12:.3g} "
        "TFLOP per loss + gradient for every method. "
        + ("Peak: CUDA allocator peak above the inputs." if c["device"] == "cuda"
           else "Peak memory: not measured on a CPU."), "",
        "| method | dtype | ms | TFLOP/s | peak GiB | loss | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if r.get("status") == "ok":
            note = r["note"]
            if r.get("agrees") is False:
                note += f"; loss off by {r['loss_rel_err_vs_tfree_float32']:.2g}"
            lines.append(f"| {r['name']} | {r['dtype']} | {r['ms']:.3g} | {r['tflops']:.3g} | "
                         f"{_fmt(r.get('peak_gib'), '.2f')} | {r['loss']:.6g} | {note} |")
        else:
            lines.append(f"| {r['name']} | {r['dtype']} | – | – | – | – | "
                         f"{r['status']}: {r.get('reason', '')} |")
    checked = [r for r in report["checks"] if r["status"] == "ok"]
    lines += ["", f"Value checks at N = {c['check_n']:,} against the float64 formula: "
              f"{len(checked)} of {len(report['checks'])} within tolerance "
              f"({sum(r['status'] == 'skipped' for r in report['checks'])} skipped). "
              f"Verdict: {report['verdict']}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- verdict


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _conformance_summary(report: dict[str, Any] | None, device: str) -> dict[str, Any]:
    if report is None:
        return {"status": "failed", "reason": "no conformance.json"}
    line = report.get("verdict", "")
    checks = [r for r in report.get("results", []) if r.get("device") == device]
    out: dict[str, Any] = {"status": "ok" if line.startswith("conformance: PASS") else "failed",
                           "verdict": line, "checks_on_" + device: len(checks), "backends": {}}
    for backend, meta in report.get("backends", {}).items():
        if "setup_error" in meta:
            out["backends"][backend] = {"status": "failed", "reason": meta["setup_error"]}
        elif device in meta.get("absent", []):
            out["backends"][backend] = skipped(f"{backend} sees no {device} device")
        else:
            rows = [r for r in checks if r.get("backend") == meta.get("name", backend)]
            out["backends"][backend] = {
                "status": "failed" if any(r["status"] == "failed" for r in rows) else "ok",
                "passed": sum(r["status"] == "passed" for r in rows),
                "failed": sum(r["status"] == "failed" for r in rows),
                "skipped": sum(r["status"] == "skipped" for r in rows)}
    return out


def verdict(out: Path, dry: bool, steps: list[str]) -> int:
    """Gather the steps into ``summary.json``, print the verdict line, return the exit code."""
    device = "cpu" if dry else "cuda"
    parsed: dict[str, dict[str, Any]] = {}
    for item in steps:
        name, _, rest = item.partition("=")
        rc, seconds, limit = (float(v) for v in rest.split(":"))
        status = ("ok" if rc == 0 else f"timed out after its {limit:.0f} s budget"
                  if rc in (124, 137) else f"exit status {rc:.0f}")
        parsed[name] = {"rc": int(rc), "seconds": seconds, "budget_s": limit, "status": status}
    summary: dict[str, Any] = {"mode": "dry" if dry else "gpu", "out": str(out),
                               "steps": parsed}
    problems = [f"{n}: {s['status']}" for n, s in parsed.items() if s["rc"] != 0]
    parts = []
    if "conformance" in parsed:
        conf = _conformance_summary(_load(out / "conformance.json"), device)
        summary["conformance"] = conf
        ran = [b for b, s in conf["backends"].items() if s["status"] != "skipped"]
        parts.append(f"conformance {'PASS' if conf['status'] == 'ok' else 'FAIL'} "
                     f"({conf.get('checks_on_' + device, 0)} checks on {device}: "
                     f"{', '.join(ran) or 'none'})")
        if conf["status"] != "ok" and parsed["conformance"]["rc"] == 0:
            problems.append("conformance")
    if "kernels" in parsed:
        kern = _load(out / "kernels.json") or {"status": "failed", "backends": {}}
        cases = [c for b in kern["backends"].values() for c in b.get("cases", [])]
        agree = sum(c["status"] == "ok" for c in cases)
        left = [b for b, r in kern["backends"].items() if r["status"] == "skipped"]
        parts.append(f"kernels {agree}/{len(cases)} agree"
                     + (f" ({', '.join(left)} skipped)" if left else ""))
        summary["kernels"] = {"status": kern.get("status", "failed"), "agree": agree,
                              "cases": len(cases)}
        if kern.get("status") == "failed" and parsed["kernels"]["rc"] == 0:
            problems.append("kernels")
    if "bench" in parsed:
        report = _load(out / "benchmark.json") or {"results": [], "verdict": "FAIL (no file)"}
        head = [r for r in report["results"]
                if r["name"] == "tfree" and r.get("status") == "ok"]
        parts.append(f"benchmark {report.get('verdict', 'FAIL (unfinished)').split(';')[0]}"
                     + "".join(f", tfree {r['dtype']} {r['ms']:.3g} ms ({r['tflops']:.3g} "
                               "TFLOP/s)" for r in head))
        summary["benchmark"] = {"verdict": report.get("verdict"), "tfree": head}
        if not str(report.get("verdict", "")).startswith("PASS") and parsed["bench"]["rc"] == 0:
            problems.append("benchmark")
    seconds = sum(s["seconds"] for s in parsed.values())
    head = f"FAIL ({'; '.join(dict.fromkeys(problems))})" if problems else "PASS"
    line = (f"gpu.sh{' --dry' if dry else ''}: {head} — {'; '.join(parts)}; "
            f"{seconds:.0f} s; results in {out}")
    summary["verdict"] = line
    write_json(out / "summary.json", summary)
    print(line)
    return 1 if problems else 0


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("env", "kernels", "kernel-child", "bench", "verdict"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "data" / "gpu")
    parser.add_argument("--dry", action="store_true", help="the CPU, tiny sizes")
    parser.add_argument("--budget", type=float, default=600.0, metavar="SECONDS",
                        help="stop starting new work after this long (default 600)")
    parser.add_argument("--n", type=int, default=None, help="rows (default 65536; dry 256)")
    parser.add_argument("--d", type=int, default=None, help="features (default 512; dry 32)")
    parser.add_argument("--check-n", type=int, default=None,
                        help="rows of the float64 value checks (default 8192; dry 256)")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--backend", choices=tuple(KERNEL_BACKENDS), help="kernel-child only")
    parser.add_argument("--step", dest="steps", action="append", default=[],
                        metavar="NAME=RC:SECONDS:BUDGET", help="verdict only, one per step")
    args = parser.parse_args(argv)
    base = DRY if args.dry else REAL
    sizes = Sizes(n=args.n or base.n, d=args.d or base.d,
                  check_n=args.check_n or min(base.check_n, args.n or base.n),
                  kernel_n=args.n or base.kernel_n)
    budget = Budget(args.budget)
    if args.step == "kernel-child":
        # the last stdout line is the report; the parent reads nothing else
        print(json.dumps(KERNEL_BACKENDS[args.backend][1](args.dry, sizes.n, sizes.d),
                         default=str))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "env":
        write_json(args.out / "environment.json", environment(args.dry))
        return 0
    if args.step == "kernels":
        return 1 if kernels(args.out, args.dry, sizes, budget)["status"] == "failed" else 0
    if args.step == "bench":
        if args.dry:
            # the fused variant is then checked in Triton's CPU interpreter; read once, when
            # Triton is first imported (by torch._dynamo), which has not happened yet
            os.environ.setdefault("TRITON_INTERPRET", "1")
        report = bench(args.out, args.dry, sizes, args.repeats, budget)
        print(markdown(report))
        return 0 if report["verdict"].startswith("PASS") else 1
    return verdict(args.out, args.dry, args.steps)


if __name__ == "__main__":
    sys.exit(main())
