"""Validation shared by the cached-training entry points of every backend.

A cached call takes ``(encoder, batch)`` pairs in place of embeddings and a mini-batch
size; the checks and their messages are the same in every framework, only the words for
the pair and the encoder differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["check_encoded_pair", "check_loss_function", "check_mini_batch_size",
           "common_length", "encoded_pairs", "is_encoded_pair"]


def check_loss_function(loss: object, *, returns: str, example: str) -> Any:
    """``loss`` if it is callable, else a ``TypeError`` saying what it must be: ``returns``
    (``"a function returning a scalar"``), e.g. ``example`` (``"tfree_jax.info_nce"``)."""
    if not callable(loss):
        raise TypeError(f"loss must be {returns} (e.g. {example} or a functools.partial of "
                        f"it), got {type(loss).__name__}")
    return loss


def common_length(lengths: Mapping[str, int], where: str, *, noun: str) -> int | None:
    """The one length along dim 0 of a batch's arrays, given by name (as messages name
    them; ``noun`` says what they are): a ``ValueError`` where two differ or the batch is
    empty; ``None`` where no length is known (traced shapes)."""
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise ValueError(f"{where}: the batch's {noun} have different lengths along dim 0 "
                         f"({listed}); they must all hold the same rows")
    if not lengths:
        return None
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{where}: the batch is empty (0 rows)")
    return n


def check_mini_batch_size(mini_batch_size: object) -> int:
    """``mini_batch_size`` as an int ``>= 1`` (``ValueError``; a bool is no size)."""
    if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) \
            or mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be a positive int (rows per mini-batch), "
                         f"got {mini_batch_size!r}")
    return mini_batch_size


def is_encoded_pair(value: object) -> bool:
    """Whether ``value`` looks like ``(encoder, batch)``: a 2-tuple led by a callable."""
    return isinstance(value, tuple) and len(value) == 2 and callable(value[0])


def check_encoded_pair(value: object, where: str, *, pair: str, encoder: str) -> Any:
    """``value`` as an ``(encoder, batch)`` pair (``TypeError`` naming ``where``);
    ``pair`` spells the pair (``"encoder, batch"``) and ``encoder`` what the encoder may
    be (``"an nn.Module or a callable"``)."""
    if not (isinstance(value, tuple) and len(value) == 2):
        got = f"a tuple of length {len(value)}" if isinstance(value, tuple) \
            else type(value).__name__
        raise TypeError(f"{where} must be a pair ({pair}), got {got}")
    if not callable(value[0]):
        raise TypeError(f"{where}: the encoder (first item of the pair) must be {encoder}, "
                        f"got {type(value[0]).__name__}")
    return value


def encoded_pairs(caller: str, encoded: tuple[object, ...], keywords: dict[str, object], *,
                  pair: str, encoder: str) -> dict[str, Any]:
    """The ``(encoder, batch)`` pairs of a cached call by argument name: the positional
    ones as ``encoded[i]`` (at least one, ``TypeError``), then the keywords that hold a
    pair; every one checked by :func:`check_encoded_pair`."""
    if not encoded:
        raise TypeError(f"{caller} needs at least one ({pair}) pair for the loss's "
                        "positional embeddings")
    pairs = {f"encoded[{i}]": check_encoded_pair(value, f"encoded[{i}]", pair=pair,
                                                  encoder=encoder)
             for i, value in enumerate(encoded)}
    pairs.update({name: check_encoded_pair(value, name, pair=pair, encoder=encoder)
                  for name, value in keywords.items() if is_encoded_pair(value)})
    return pairs
