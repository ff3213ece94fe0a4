"""The one way the simulator schedules work on the SimPy clock: ``at(env, delay, callback, value)``.

SimPy's ``Timeout`` carries machinery our callbacks never use (value checks, ``repr``, event
chaining). This is a bare SimPy event — the same heap entry SimPy's own ``Timeout`` makes,
``(time, priority, sequence, event)`` — with a callback list and a payload, made in a third of
the time. Ties at the same instant run in scheduling order (SimPy's sequence number), so runs are
deterministic. A scheduled call cannot be cancelled: owners keep a token and ignore stale calls.
"""

from __future__ import annotations

from typing import Any, Callable

import simpy
from simpy.core import NORMAL

__all__ = ["Call", "at"]


class Call:
    """A scheduled callback. SimPy's step() needs ``callbacks`` and ``_ok`` and nothing else."""

    __slots__ = ("callbacks", "_ok", "_value", "env", "_defused")

    def __init__(self, env: simpy.Environment, callback: Callable[["Call"], None], value: Any) -> None:
        self.env = env
        self.callbacks = [callback]
        self._ok = True
        self._value = value


def at(env: simpy.Environment, delay: float, callback: Callable[[Call], None], value: Any = None) -> Call:
    """Run ``callback(call)`` after ``delay`` simulated seconds; ``call._value`` is ``value``."""
    call = Call(env, callback, value)
    env.schedule(call, NORMAL, delay)   # type: ignore[arg-type]
    return call
