"""The public functions, written once: signatures, defaults and docstrings.

Every backend exposes the same functions (``info_nce``, ``nt_xent``, ``sup_con``,
``loss_from_similarity``, ``logits``) with the same parameters in the same order and the
same defaults; a backend adds its own keywords at the end (``group=``, ``kernel=``,
``xp=``). :func:`build` makes a backend's functions from its ``Runtime``
(``_runtime``): real Python functions (as ``dataclasses`` makes ``__init__``), so
``inspect.signature``, tracing compilers (``torch.compile``, ``jax.jit``, ``tf.function``)
and documentation tools see ordinary functions, each with a docstring rendered from the
texts here and the runtime's notes.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from . import _validation as check
from ._options import DEFAULT_EPS

if TYPE_CHECKING:
    from ._runtime import Runtime

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One parameter: its name, default (:data:`REQUIRED` for a positional one), what it
    takes (``"array"``, ``"array | None"`` or a Python annotation) and its documentation.
    ``functions``: the public functions that take it (``None``: all of them)."""

    name: str
    default: Any
    kind: str
    doc: str
    functions: frozenset[str] | None = None

    def applies_to(self, function: str) -> bool:
        return self.functions is None or function in self.functions


@dataclass(frozen=True)
class Request:
    """A loss call resolved to its layout: the layout's name, its arrays (positional, as
    the engine takes them) and whether both directions are averaged."""

    layout: str
    arrays: tuple[Any, ...]
    symmetric: bool = False


@dataclass(frozen=True)
class PublicFunction:
    """One public function: ``route`` names the runtime method that runs it (``"loss"``
    or ``"logits"``); ``select`` resolves a loss call's arguments to a :class:`Request`."""

    name: str
    summary: str
    positional: tuple[Param, ...]
    keywords: tuple[Param, ...]
    shared: tuple[str, ...]
    returns: str
    gradients: str = ""
    route: str = "loss"
    select: Callable[[Mapping[str, Any]], Request] | None = None
    tileable: bool = True  # whether chunk_size applies (not to a given matrix)
    examples: str = ""
    """What every backend's example shows: the opening of the ``Examples`` section, before
    the runtime's code (``Runtime.examples``)."""

    @property
    def array_names(self) -> tuple[str, ...]:
        """The parameters that take arrays (the others are options)."""
        return tuple(p.name for p in (*self.positional, *self.keywords, SHARED["where"])
                     if p.kind in (_ARRAY, _OPTIONAL))


# --------------------------------------------------------------------------- shared texts

_ARRAY, _OPTIONAL = "array", "array | None"

SHARED: dict[str, Param] = {p.name: p for p in (
    Param("where", None, _OPTIONAL,
          "Optional boolean ``(N,)``: rows where it is False are neither anchors nor "
          "candidates, as if absent (padding in static-shape batches, uneven shards), and "
          "get a zero gradient."),
    Param("logit_map", "arctanh", "str",
          '``"arctanh"`` (default): ``ℓ = 2·atanh(clip(s, -b, b))``, no temperature; or '
          '``"temperature"``: InfoNCE\'s ``ℓ = s/τ`` (for comparisons).'),
    Param("temperature", None, "float | None",
          '``τ > 0``, only with ``logit_map="temperature"`` (a Python number: a constant, '
          "not a learnable parameter)."),
    Param("eps", DEFAULT_EPS, "float",
          "The clip ``b`` = the largest compute-dtype value ``<= 1 - eps`` (default 1e-6: "
          "logit cap 14.5087 in float64, 14.4955 in float32); ``eps`` in ``(0, 0.5)``, large "
          "enough that ``1 - eps < 1`` in the compute dtype."),
    Param("reduction", "mean", "str",
          '``"mean"`` over the anchors that have a positive (0 if none), ``"sum"``, or '
          '``"none"`` (per-anchor losses, 0 for anchors without a positive).'),
    Param("chunk_size", "auto", "int | str | None",
          '``"auto"`` (default): the whole ``N × M`` similarity matrix while it is small, '
          "else tiled in cache-sized blocks, chosen from the static shapes and the device "
          "(budgets below). ``None``: always the whole matrix, kept for the gradient (three "
          "matrix products). A positive int: tiled, ``chunk_size`` anchors at a time, each "
          "block of the matrix recomputed in the gradient, so no ``N × M`` array exists "
          "(extra memory ``O((N + M)·D + chunk_size·M)``, four matrix products instead of "
          "three). Results agree to round-off whatever the choice. "
          "``loss_from_similarity`` is never tiled (its matrix is an input): an int there "
          "is a ``ValueError``."),
    Param("check_finite", False, "bool",
          "``True``: count the NaN and ±inf values of the floating inputs first and raise "
          "``ValueError`` naming the input and the count. A value check: it reads the "
          "arrays, so it costs a pass over them and needs concrete values. Default "
          "``False``: no value is read."),
)}

LOSS_KEYWORDS = tuple(SHARED)

LOSSES = frozenset({"info_nce", "nt_xent", "sup_con", "loss_from_similarity"})
"""The loss functions (every public function but ``logits``)."""
BATCHED = frozenset({"info_nce", "nt_xent", "sup_con"})
"""The loss functions of embeddings, whose batch can be sharded over devices."""

_LOSS_FORMULA = """
        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j∈C(i)} exp(ℓ_ij)],
        ℓ_ij = 2·atanh(clip(s_ij, -b, b)),   s_ij = ⟨u_i, u_j⟩ (rows normalised)
"""

_RETURNS = ("The loss in the compute dtype (float64 for float64 inputs, float32 for "
            'float16 / bfloat16 / float32): a scalar for ``"mean"`` and ``"sum"``, {shape} '
            'for ``"none"``.')


# --------------------------------------------------------------------------- selection


_RETRIEVAL = ("hard_negatives", "hard_negative_mask", "key_ids", "hard_negative_ids")


def _info_nce(args: Mapping[str, Any]) -> Request:
    negatives, labels, symmetric = args["negatives"], args["labels"], args["symmetric"]
    check.check_negatives_conflicts(negatives, labels, symmetric)
    retrieval = [name for name in _RETRIEVAL if args[name] is not None]
    if retrieval:
        check.check_retrieval_conflicts(retrieval[0], negatives, labels)
        return Request("retrieval", (args["query"], args["key"],
                                     *(args[name] for name in _RETRIEVAL), args["where"]),
                       symmetric)
    if negatives is not None:
        return Request("negatives", (args["query"], args["key"], negatives, args["where"]))
    return Request("pairs", (args["query"], args["key"], labels, args["where"]), symmetric)


def _nt_xent(args: Mapping[str, Any]) -> Request:
    return Request("nt_xent", (args["z1"], args["z2"], args["where"]))


def _sup_con(args: Mapping[str, Any]) -> Request:
    return Request("sup_con", (args["features"], args["labels"], args["where"]))


def _similarity(args: Mapping[str, Any]) -> Request:
    return Request("similarity", (args["similarity"], args["positive_mask"],
                                  args["valid_mask"], args["where"]))


def _positional(name: str, doc: str) -> Param:
    return Param(name, REQUIRED, _ARRAY, doc)


FUNCTIONS: tuple[PublicFunction, ...] = (
    PublicFunction(
        "info_nce",
        "The pairs layout (InfoNCE, CLIP) with the temperature-free logit map "
        "(Kim & Kim, arXiv:2501.17683).\n\n"
        "For query ``i`` the candidates ``C(i)`` are all ``N`` keys and the positive is key "
        "``i`` (with ``labels``: every key of the query's label). With ``hard_negatives`` "
        "(retrieval: sentence-transformers' MultipleNegativesRankingLoss, DPR) the "
        "candidates are all keys and all ``N·Hn`` hard negatives of the batch; with "
        "``negatives`` (MoCo) they are key ``i`` and the negatives, the other rows' keys "
        "not among them:\n" + _LOSS_FORMULA,
        (_positional("query", "``(N, D)`` embeddings (not normalised: the loss normalises "
                     "rows)."),
         _positional("key", "``(N, D)`` embeddings, one dtype with ``query``.")),
        (Param("negatives", None, _OPTIONAL,
               "``(M, D)`` shared or ``(N, M, D)`` per-row negatives (MoCo: each query "
               "against its own key and the negatives only); not with ``labels``, "
               "``symmetric`` or ``hard_negatives`` (``ValueError``)."),
         Param("hard_negatives", None, _OPTIONAL,
               "``(N, Hn, D)`` mined hard negatives: every row's are candidates of every "
               "query, besides all keys (in-batch plus hard negatives)."),
         Param("hard_negative_mask", None, _OPTIONAL,
               "Boolean ``(N, Hn)``: the hard-negative slots that hold one (ragged "
               "mining); a masked slot is no candidate and its row gets a zero gradient, "
               "whatever it holds."),
         Param("labels", None, _OPTIONAL,
               "Integer ``(N,)``: keys with the query's label are its positives (not with "
               "``hard_negatives`` or ``key_ids``)."),
         Param("key_ids", None, _OPTIONAL,
               "Integer ``(N,)`` identities of the keys (document ids): a candidate with "
               "the id of query ``i``'s positive, other than the positive itself, is a "
               "duplicate of it and is dropped from ``i``'s candidates (not a negative; "
               "unlike ``labels``, it never becomes a positive)."),
         Param("hard_negative_ids", None, _OPTIONAL,
               "Integer ``(N, Hn)`` identities of the hard negatives, compared with "
               "``key_ids`` in the same way (both or neither, with ``hard_negatives``)."),
         Param("symmetric", False, "bool",
               "Average both directions, ``½(L_q→k + L_k→q)`` (CLIP); each direction is "
               "reduced first, ``\"none\"`` gives ``½(L_q,i + L_k,i)`` per pair.")),
        LOSS_KEYWORDS,
        _RETURNS.format(shape="``(N,)``"),
        examples="Eight random pairs of 16-d embeddings (key ``i`` is query ``i``'s "
                 "positive): one direction, then CLIP's symmetric loss.",
        gradients="``(d_query, d_key)``, and ``d_negatives`` with ``negatives`` or "
                  "``d_hard_negatives`` with ``hard_negatives``",
        select=_info_nce,
    ),
    PublicFunction(
        "nt_xent",
        "NT-Xent (SimCLR) with the temperature-free logit map.\n\n"
        "``Z = [z1; z2]`` has ``2N`` rows; each row's candidates are the other ``2N - 1`` "
        "rows and its positive is the other view ``i ± N``:\n\n"
        "        L_i = log Σ_{j≠i} exp(ℓ_ij) - ℓ_{i,i±N},   "
        "ℓ_ij = 2·atanh(clip(⟨u_i, u_j⟩, -b, b))\n",
        (_positional("z1", "``(N, D)`` embeddings of the first views."),
         _positional("z2", "``(N, D)`` embeddings of the second views, one dtype with "
                     "``z1``.")),
        (),
        LOSS_KEYWORDS,
        _RETURNS.format(shape="``(2N,)`` (the ``z1`` anchors first)")
        + " ``where`` masks the pair ``(z1_i, z2_i)``.",
        gradients="``(d_z1, d_z2)``",
        select=_nt_xent,
        examples="Two views of 8 examples: 16 anchors, each with its other view as "
                 "positive (per-anchor losses with ``reduction=\"none\"``).",
    ),
    PublicFunction(
        "sup_con",
        "Supervised contrastive loss (SupCon, the \"outside\" average) with the "
        "temperature-free logit map.\n\n"
        "Candidates are all other rows, positives the rows of the same label (other "
        "positives stay in the denominator):\n\n"
        "        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j≠i} exp(ℓ_ij)]\n",
        (_positional("features", "``(N, D)`` or ``(N, V, D)`` embeddings (``V`` views, "
                     "flattened view-major)."),
         _positional("labels", "Integer ``(N,)`` class ids.")),
        (),
        LOSS_KEYWORDS,
        _RETURNS.format(shape="``(N,)`` or ``(N, V)`` like the input"),
        gradients="``(d_features,)``",
        select=_sup_con,
        examples="Two views each of eight examples in three classes, as ``(N, V, D)``: "
                 "per-anchor losses of shape ``(N, V)``.",
    ),
    PublicFunction(
        "loss_from_similarity",
        "The loss on a precomputed similarity matrix ``S`` ``(N, M)`` (rows are "
        "anchors):\n\n"
        "        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [φ(S_ip) - log Σ_{j∈C(i)} exp(φ(S_ij))]\n",
        (_positional("similarity", "``(N, M)`` cosine similarities."),
         _positional("positive_mask", "Boolean ``(N, M)``: the positives ``P``, inside "
                     "``valid_mask`` (``ValueError`` otherwise, where the masks are "
                     "concrete: eager calls; under tracing the check is skipped and "
                     "positives outside ``C`` are ignored).")),
        (Param("valid_mask", None, _OPTIONAL,
               "Boolean ``(N, M)``: the candidates ``C`` (default: every entry)."),),
        LOSS_KEYWORDS,
        _RETURNS.format(shape="``(N,)``"),
        gradients="``(d_similarity,)``",
        select=_similarity,
        tileable=False,
        examples="A ``4 × 6`` matrix of cosine similarities, the positive of row ``i`` in "
                 "column ``i``, the last column no candidate of the first row.",
    ),
    PublicFunction(
        "logits",
        "The temperature-free logit map ``φ(clip(s, -b, b))``, ``φ(s) = log((1+s)/(1-s)) "
        "= 2·atanh(s)``, with ``b`` the largest compute-dtype value ``<= 1 - eps``.\n\n"
        "``φ(0.5) = ln 3``, ``φ(0.9) = ln 19``; the cap ``φ(b)`` is 14.508657 (float64) "
        "and 14.495466 (float32) at the default ``eps = 1e-6``. Its derivative is "
        "``φ'(s) = 2/(1 - s²)`` for ``-b <= s <= b`` (bounds included) and 0 outside.",
        (_positional("similarity", "Cosine similarities, any shape."),),
        (),
        ("eps",),
        "``φ`` of every entry, in the compute dtype.",
        route="logits",
        examples="``φ(0.5) = ln 3``; a similarity past the clip bound gets the cap.",
    ),
)

FUNCTION_NAMES = tuple(f.name for f in FUNCTIONS)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Variant:
    """How a runtime presents the functions: a name suffix (``"_value_and_grad"``), the
    summary's opening line in place of the function's (``{name}`` and ``{gradients}``
    filled in), the ``Returns`` text and the opening of the ``Examples`` section
    (``None``: the function's)."""

    suffix: str = ""
    summary: str | None = None
    returns: str | None = None
    functions: tuple[str, ...] = FUNCTION_NAMES
    examples: str | None = None


def parameters(runtime: Runtime, function: PublicFunction) -> tuple[Param, ...]:
    """Every parameter of ``function`` as ``runtime`` exposes it, in signature order."""
    shared = tuple(SHARED[name] for name in function.shared)
    extras = tuple(p for p in runtime.extras if p.applies_to(function.name))
    return (*function.positional, *function.keywords, *shared, *extras)


def _annotation(kind: str, runtime: Runtime) -> Any:
    if kind == _ARRAY:
        return runtime.array_type
    if kind == _OPTIONAL:
        return Optional[runtime.array_type]  # noqa: UP045 - a runtime type, not syntax
    return kind


def _docstring(runtime: Runtime, function: PublicFunction, variant: Variant) -> str:
    head = function.summary
    if variant.summary is not None:
        head = variant.summary.format(name=function.name, gradients=function.gradients)
    lines = [head.rstrip(), "", "Args:"]
    for p in parameters(runtime, function):
        lines.append(_wrap(f"{p.name}: {p.doc}"))
        note = runtime.notes.get(p.name)
        if note:  # the backend's facts: a paragraph of their own under the parameter
            lines += ["", _wrap(note, indent=8)]
    returns = function.returns
    if variant.returns is not None:
        returns = variant.returns.format(name=function.name, gradients=function.gradients)
    lines += ["", "Returns:", _wrap(returns)]
    note = runtime.notes.get(f"returns:{function.route}")
    if note:
        lines += ["", _wrap(note, indent=8)]
    lines += _examples(runtime, function, variant)
    return "\n".join(lines) + "\n"


def _examples(runtime: Runtime, function: PublicFunction, variant: Variant) -> list[str]:
    """The ``Examples`` section: the function's opening sentence and the runtime's code,
    a fenced Python block (rendered by the docs, run by the docs' tests)."""
    code = runtime.examples.get(function.name + variant.suffix)
    if not code:
        return []
    opening = function.examples if variant.examples is None else variant.examples
    lines = ["", "Examples:"]
    if opening:
        lines += [textwrap.fill(opening, width=92, initial_indent="    ",
                                subsequent_indent="    ", break_on_hyphens=False,
                                break_long_words=False), ""]
    lines.append("    ```python")
    lines += [f"    {line}".rstrip() for line in textwrap.dedent(code).strip().splitlines()]
    lines.append("    ```")
    return lines


def _wrap(text: str, indent: int = 4) -> str:
    """One Google-style entry, indented under its section, its continuation lines deeper
    (a paragraph that continues an entry: ``indent=8``, every line as deep)."""
    return textwrap.fill(text, width=92, initial_indent=" " * indent,
                         subsequent_indent=" " * max(indent, 8),
                         break_on_hyphens=False, break_long_words=False)


def _source(name: str, params: tuple[Param, ...], route: str) -> str:
    positional = [p.name for p in params if p.default is REQUIRED]
    keywords = [f"{p.name}=__defaults[{p.name!r}]" for p in params if p.default is not REQUIRED]
    arguments = ", ".join(f"{p.name!r}: {p.name}" for p in params)
    signature = ", ".join(positional + (["*"] if keywords else []) + keywords)
    return (f"def {name}({signature}):\n"
            f"    return __runtime.{route}(__function, {{{arguments}}})\n")


def make_function(runtime: Runtime, function: PublicFunction, module: str,
                  variant: Variant = Variant()) -> Callable[..., Any]:
    """``function`` as a real Python function of ``module`` calling ``runtime``."""
    params = parameters(runtime, function)
    name = function.name + variant.suffix
    scope: dict[str, Any] = {"__runtime": runtime, "__function": function,
                             "__defaults": {p.name: p.default for p in params}}
    exec(compile(_source(name, params, function.route), f"<tfree {module}.{name}>", "exec"),
         scope)
    fn = scope[name]
    fn.__module__ = module
    fn.__qualname__ = name
    fn.__doc__ = _docstring(runtime, function, variant)
    fn.__annotations__ = {p.name: _annotation(p.kind, runtime) for p in params}
    fn.__annotations__["return"] = runtime.return_type
    return fn


def build(runtime: Runtime, module: str, variant: Variant = Variant()) -> tuple[Any, ...]:
    """The public functions of ``runtime``, in :data:`FUNCTIONS` order (``info_nce,
    nt_xent, sup_con, loss_from_similarity, logits``; those of ``variant.functions``, with
    ``variant.suffix`` appended to each name), as functions of ``module``."""
    return tuple(make_function(runtime, f, module, variant) for f in FUNCTIONS
                 if f.name in variant.functions)
