"""Run a coroutine from synchronous code — also from inside a running event loop (Jupyter).

A notebook cell already runs inside an event loop, where ``asyncio.run`` refuses to start
another; there the coroutine runs on a private loop in a short-lived thread instead, and its
result (or exception) comes back to the caller.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(make: Callable[[], Awaitable[T]], *, name: str = "publicai-lab",
             loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> T:
    """``make()`` builds the coroutine (called on the loop's thread); returns its result."""
    def run() -> T:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(make())   # type: ignore[arg-type]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name=name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
