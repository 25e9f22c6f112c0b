"""A backend's half of the public functions: the :class:`Runtime` that runs a call.

Every public loss call (``_surface``) runs the same steps, in this order, each raising
before any work is done:

1. resolve the arguments to a layout (``negatives=`` means MoCo, ...);
2. check that every array comes from the backend's libraries (:meth:`Runtime.check_arrays`)
   and the switches and backend keywords (``check_finite``, :meth:`Runtime.check_extras`);
3. convert the arrays (:meth:`Runtime.convert`) and validate the call into its static
   ``Problem`` (:meth:`Runtime.prepare`: options, shapes, dtypes, devices, strategy);
4. the value checks, where the values are concrete (:meth:`Runtime.concrete`): the
   layout's own (positives inside ``valid_mask``) and ``check_finite``;
5. :meth:`Runtime.apply`: the backend's autodiff wiring around ``engine.forward`` /
   ``engine.backward`` (or ``value_and_grad``), with its loop driver, collectives and
   kernels.

A backend subclasses :class:`Runtime`, overrides the hooks it needs and gets its public
functions from ``engine.build``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _validation as check
from ._layouts import Layout, layout
from ._namespace import Array, Namespace
from ._options import make_options
from ._problem import Problem, prepare
from ._surface import Param, PublicFunction, Request

Named = tuple[tuple[str, Any], ...]


def plain_options(function: PublicFunction, args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments with NumPy scalars given for options (``np.float32`` eps,
    ``np.int64`` chunk size, ``np.True_``) as the Python scalars they stand for: options
    are static constants of a trace. A 0-d NumPy array counts as a scalar too, because a
    tracer cannot tell them apart (Dynamo sees both as 0-d arrays), and ``.item()`` is what
    every tracer folds into a constant."""
    arrays = set(function.array_names)
    return {name: value.item() if name not in arrays and _numpy_scalar(value) else value
            for name, value in args.items()}


def _numpy_scalar(value: Any) -> bool:
    return isinstance(value, (np.generic, np.ndarray)) and value.ndim == 0


class Runtime:
    """The hooks of one backend (defaults: an Array API namespace given as ``xp``)."""

    array_type: Any = Any
    """The annotation of array arguments and results in the public signatures."""
    return_type: Any = Any
    extras: tuple[Param, ...] = ()
    """The backend's own keywords, after the shared ones (``group``, ``kernel``, ``xp``)."""
    notes: Mapping[str, str] = {}
    """Backend facts appended to a parameter's documentation (by name), and to the
    ``Returns`` section (``"returns:loss"``, ``"returns:logits"``)."""
    examples: Mapping[str, str] = {}
    """A short, self-contained example per public function (by name, with the variant's
    suffix: ``"info_nce_value_and_grad"``), shown as the ``Examples`` section of its
    docstring and run by the docs' tests."""
    libraries: tuple[str, ...] | None = None
    """The array libraries a call may mix (``None``: the first array's library only)."""
    also: tuple[str, ...] = ()
    """Further accepted libraries not named in messages (``"builtins"``: Python numbers)."""
    tracing = ""
    """How messages name the backend's tracing mechanism (``"jax.jit / jax.vmap"``)."""
    one_pass = True
    """Whether :meth:`apply` may compute the gradient in the loss's pass (the strategy
    budgets ``chunk_size="auto"`` for it)."""
    xp: Namespace = None

    # ----------------------------------------------------------------- the call

    def loss(self, function: PublicFunction, args: Mapping[str, Any]) -> Any:
        """Run one loss call (see the module docstring for the steps)."""
        assert function.select is not None
        self.check_options(function, args)
        args = plain_options(function, args)
        check.check_required([(p.name, args[p.name]) for p in function.positional])
        request = function.select(args)
        spec = layout(request.layout)
        named = tuple(zip(spec.arrays, request.arrays, strict=True))
        extras = {p.name: args[p.name] for p in self.extras if p.applies_to(function.name)}
        self.check_arrays(named, extras)  # first: Dynamo cannot trace a NumPy array's dtype
        check.check_plain_numpy(named)
        check.check_flag("check_finite", args["check_finite"])
        self.check_extras(extras)
        arrays = self.convert(named)
        xp = self.namespace(arrays, extras)
        problem = self.prepare(request, arrays, args, extras, xp)
        self.check_call(problem, arrays, extras, xp)
        if self.concrete(arrays[len(spec.differentiable):]):
            spec.check_values(arrays, xp)
        if args["check_finite"]:
            self.check_finite(spec, arrays, xp)
        return self.apply(problem, arrays, extras, xp)

    def logits(self, function: PublicFunction, args: Mapping[str, Any]) -> Any:
        """The logit map of ``args["similarity"]`` (see :meth:`logit_map`)."""
        extras = {p.name: args[p.name] for p in self.extras if p.applies_to(function.name)}
        return self.logit_map(args["similarity"], args["eps"], extras)

    # ----------------------------------------------------------------- hooks

    def check_options(self, function: PublicFunction, args: Mapping[str, Any]) -> None:
        """Options the backend cannot take as given (before they are made plain)."""

    def check_arrays(self, named: Named, extras: Mapping[str, Any]) -> None:
        """Every array from the accepted libraries (``TypeError``), before anything reads
        them."""
        check.check_one_library(named, self.libraries, also=self.also)

    def check_extras(self, extras: Mapping[str, Any]) -> None:
        """The backend's own keywords (``ValueError`` / ``TypeError``)."""

    def convert(self, named: Named) -> tuple[Array | None, ...]:
        """The arrays as the backend's arrays."""
        return tuple(x for _, x in named)

    def namespace(self, arrays: tuple[Array | None, ...], extras: Mapping[str, Any]) -> Namespace:
        return self.xp

    def device_kind(self, arrays: tuple[Array | None, ...],
                    extras: Mapping[str, Any]) -> str | None:
        """``"cpu"``, ``"fused_cpu"`` or ``"accelerator"`` for ``chunk_size="auto"``
        (``None``: read from the arrays' device)."""
        return None

    def world_size(self, extras: Mapping[str, Any]) -> int:
        """The number of devices the batch is sharded over (1: none)."""
        return 1

    def prepare(self, request: Request, arrays: tuple[Array | None, ...],
                args: Mapping[str, Any], extras: Mapping[str, Any], xp: Namespace) -> Problem:
        """Validate the options and the arrays into the call's static ``Problem``."""
        options = make_options(logit_map=args["logit_map"], temperature=args["temperature"],
                               eps=args["eps"], reduction=args["reduction"])
        return prepare(request.layout, arrays, options=options, symmetric=request.symmetric,
                       chunk_size=args["chunk_size"], device_kind=self.device_kind(arrays, extras),
                       world_size=self.world_size(extras), one_pass=self.one_pass, xp=xp)

    def check_call(self, problem: Problem, arrays: tuple[Array | None, ...],
                   extras: Mapping[str, Any], xp: Namespace) -> None:
        """Checks that need the ``Problem`` (a cotangent's shape), before any work."""

    def concrete(self, arrays: tuple[Array | None, ...]) -> bool:
        """Whether these arrays' values can be read now (not while a compiler traces)."""
        return True

    def check_finite(self, spec: Layout, arrays: tuple[Array | None, ...],
                     xp: Namespace) -> None:
        """``check_finite=True``: count the non-finite values of the differentiable inputs;
        a ``ValueError`` where their values are unknown (never a silent skip)."""
        differentiable = arrays[: len(spec.differentiable)]
        if not self.concrete(differentiable):
            raise ValueError(check.needs_eager_message(self.tracing))
        check.check_finite(list(zip(spec.differentiable, differentiable, strict=True)), xp)

    def apply(self, problem: Problem, arrays: tuple[Array | None, ...],
              extras: Mapping[str, Any], xp: Namespace) -> Any:
        """The loss of ``problem``, differentiable through the analytic gradient."""
        raise NotImplementedError

    def logit_map(self, similarity: Any, eps: float, extras: Mapping[str, Any]) -> Any:
        """``logits``: ``φ`` of every entry, differentiable with ``engine.logit_slope``."""
        raise NotImplementedError
