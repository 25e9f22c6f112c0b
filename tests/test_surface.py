"""The public surface is written once: every backend's functions have the core's
parameters, in the same order, with the same defaults, then the backend's own keywords."""

from __future__ import annotations

import importlib
import inspect

import pytest

import tfree_core
from tfree_core import engine

BACKENDS = ("tfree_core", "tfree_torch", "tfree_jax", "tfree_tf")


def _surface(function: engine.PublicFunction) -> list[tuple[str, object, object]]:
    params = (*function.positional, *function.keywords,
              *(engine.SHARED[name] for name in function.shared))
    kind = inspect.Parameter
    return [(p.name, kind.POSITIONAL_OR_KEYWORD if p.default is inspect.Parameter.empty
             else kind.KEYWORD_ONLY, p.default) for p in params]


def _rows(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _backend(name: str):
    if name != "tfree_core":
        pytest.importorskip(name.replace("tfree_", "").replace("tf", "tensorflow"))
    return importlib.import_module(name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("function", engine.FUNCTIONS, ids=lambda f: f.name)
def test_backend_functions_have_the_core_parameters_first(backend, function):
    module = _backend(backend)
    fn = getattr(module, function.name)
    expected = _surface(function)
    got = _rows(fn)
    assert got[: len(expected)] == expected
    extras = got[len(expected):]
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in extras)
    assert fn.__module__ == backend
    assert "Args:" in fn.__doc__
    assert "Returns:" in fn.__doc__
    for name, _, _ in got:  # every parameter documented, in order
        assert f"\n    {name}: " in fn.__doc__, name


def test_backend_keywords_are_the_ones_expected():
    """The extras each backend adds (a backend changing them changes its public API)."""
    expected = {"tfree_core": ("xp",), "tfree_torch": ("group", "kernel"),
                "tfree_jax": ("group", "kernel"), "tfree_tf": ("group",)}
    for backend, extras in expected.items():
        module = _backend(backend)
        names = [p.name for p in inspect.signature(module.info_nce).parameters.values()]
        assert tuple(names[-len(extras):]) == extras, backend
        similarity = [p.name for p in
                      inspect.signature(module.loss_from_similarity).parameters.values()]
        assert "group" not in similarity  # a given matrix has no batch to shard


def test_core_gradients_add_the_cotangent():
    for function in engine.FUNCTIONS:
        if function.route != "loss":
            continue
        names = [p.name for p in inspect.signature(
            getattr(tfree_core, f"{function.name}_value_and_grad")).parameters.values()]
        assert names[-2:] == ["cotangent", "xp"]
        assert names[:-2] == [p.name for p in inspect.signature(
            getattr(tfree_core, function.name)).parameters.values()][:-1]
