"""Validation shared by the cached-training entry points of every backend.

A cached call takes ``(encoder, batch)`` pairs in place of embeddings and a mini-batch
size; the checks and their messages are the same in every framework, only the words for
the pair and the encoder differ.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_encoded_pair", "check_mini_batch_size", "encoded_pairs", "is_encoded_pair"]


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
