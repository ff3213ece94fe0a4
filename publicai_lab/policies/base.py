"""The routing-policy contract, a tiny base class, and the registry of policies by short name.

A policy is any object with a ``name`` and a synchronous ``route(req, view, rng)``. It may also
have ``observe(decision, record)`` to learn from finished requests (only ``latency_ewma`` among
the built-ins uses it). Policies never see SimPy or sockets: the same object runs in the simulator
and in the live gateway. Scenarios name a policy by its short name; :func:`get` turns
``(name, params)`` into a fresh instance, so state (counters, EWMAs) never leaks between runs.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar, runtime_checkable

import numpy as np

from publicai_lab.errors import PolicyError
from publicai_lab.types import ClusterView, RequestSpec, RouteDecision

if TYPE_CHECKING:  # records.py imports pandas; the live gateway should not pay for it here
    from publicai_lab.records import RequestRecord

__all__ = ["RoutingPolicy", "ObservingPolicy", "BasePolicy", "register", "get", "available"]


@runtime_checkable
class RoutingPolicy(Protocol):
    """Decides where one request goes. ``view`` holds only eligible backends (see ``decide``).

    ``route`` must be pure with respect to the outside world (no I/O, no clock, no globals), take
    all randomness from ``rng``, and return a :class:`RouteDecision` whose ``backend_id`` and
    ``fallbacks`` come from ``view``. ``observe(decision, record)`` is optional; callers look it up
    with ``getattr(policy, "observe", None)`` (every :class:`BasePolicy` has a no-op one).
    """

    name: str

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        ...


@runtime_checkable
class ObservingPolicy(RoutingPolicy, Protocol):
    """A policy that also learns from finished requests."""

    def observe(self, decision: RouteDecision, record: "RequestRecord") -> None:
        ...


class BasePolicy:
    """Convenience base: a no-op ``observe``, a ``params`` dict and a readable ``__repr__``.

    Subclasses store each constructor argument under an attribute of the same name, which is
    what ``params`` and ``__repr__`` read. ``scores=True`` asks a policy to fill
    ``RouteDecision.scores`` (off by default: building a dict per request costs simulator time).
    """

    name: str = "base"

    def __init__(self, *, scores: bool = False) -> None:
        if not isinstance(scores, bool):
            raise PolicyError(f"routing policy {self.name!r}: param scores must be true or false, "
                              f"got {scores!r}")
        self.scores = scores

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        raise NotImplementedError

    def observe(self, decision: RouteDecision, record: "RequestRecord") -> None:
        """Feedback hook; the default ignores it."""

    @property
    def params(self) -> dict[str, Any]:
        """Constructor arguments of this instance (for logs, records and ``repr``)."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in list(sig.parameters)[1:]
                if sig.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                  inspect.Parameter.VAR_KEYWORD)
                and hasattr(self, p)}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({inner})"


def float_param(policy: str, param: str, value: object, *, low: float, high: float,
                low_open: bool = False) -> float:
    """Validate a numeric constructor argument, raising a one-line :class:`PolicyError`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = float(value) if ok else math.nan  # type: ignore[arg-type]
    if ok and not math.isnan(x) and (x > low if low_open else x >= low) and x <= high:
        return x
    bracket = "(" if low_open else "["
    raise PolicyError(f"routing policy {policy!r}: param {param} must be a number in "
                      f"{bracket}{low:g}, {high:g}], got {value!r}")


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type] = {}
P = TypeVar("P", bound=type)


def register(name: str) -> Callable[[P], P]:
    """Class decorator: make a policy class available to :func:`get` under ``name``.

    Sets ``cls.name = name``. Registering a different class under a taken name is an error
    (re-registering the same class, e.g. on module reload, is allowed).
    """
    if not isinstance(name, str) or not name or name.strip() != name:
        raise PolicyError(f"policy names must be non-empty strings without spaces, got {name!r}")

    def deco(cls: P) -> P:
        if not callable(getattr(cls, "route", None)):
            raise PolicyError(f"cannot register {cls!r} as {name!r}: it has no route() method")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise PolicyError(f"policy name {name!r} is already registered to "
                              f"{old.__module__}.{old.__qualname__}")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return deco


def _ensure_builtins() -> None:
    # Importing the package registers the built-ins; this makes get() work even when only
    # publicai_lab.policies.base was imported.
    import publicai_lab.policies  # noqa: F401


def available() -> list[str]:
    """Sorted short names of all registered policies."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def get(name: str, **params: Any) -> RoutingPolicy:
    """A fresh policy instance for ``name`` configured with ``params``.

    Raises :class:`PolicyError` (one line) for an unknown name, an unknown parameter, or a bad value.
    """
    _ensure_builtins()
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise PolicyError(f"unknown routing policy {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    sig = inspect.signature(cls)
    try:
        sig.bind(**params)
    except TypeError as exc:
        accepted = ", ".join(p for p in sig.parameters) or "none"
        raise PolicyError(f"routing policy {name!r}: bad params {params!r}: {exc}; "
                          f"accepted: {accepted}") from None
    return cls(**params)  # type: ignore[no-any-return]
