"""LiteLLM's allowed-fails rule, shared by the simulated gateway (sim/backend.py) and the live one
(live/gateway.py), so that both worlds cool a failing backend down at exactly the same moment.

A backend that fails more than ``allowed_fails`` times within a minute is taken out of rotation
for ``cooldown_s`` (LiteLLM's ``allowed_fails`` and ``cooldown_time``).
"""

from __future__ import annotations

from collections import deque

__all__ = ["FAIL_WINDOW_S", "register_failure"]

FAIL_WINDOW_S = 60.0   # LiteLLM counts allowed_fails per minute


def register_failure(fails: deque[float], now_s: float, allowed_fails: int) -> bool:
    """Record a failure at ``now_s`` in ``fails`` (forgetting those older than the window).
    True when this failure exceeds ``allowed_fails``: start a cooldown (the window is cleared)."""
    fails.append(now_s)
    while fails and fails[0] < now_s - FAIL_WINDOW_S:
        fails.popleft()
    if len(fails) > allowed_fails:
        fails.clear()
        return True
    return False
