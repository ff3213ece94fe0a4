"""API keys, tiers and per-key request-rate limits for the live gateway.

Keys come from a YAML or JSON file, from the environment, or from a dict:

.. code-block:: yaml

    # api_keys.yaml: key -> tier, or key -> {tier, name}
    sk-alice-0123: pro
    sk-bob-4567: {tier: free, name: bob}

Environment: ``PUBLICAI_API_KEYS="sk-alice-0123:pro,sk-bob-4567:free"`` (``key:tier`` pairs; a key
without ``:tier`` is ``free``), or ``PUBLICAI_API_KEYS_FILE=path``.

Each key gets an *identity*: its ``name`` if given, else ``key-`` and the first 12 hex digits of
the key's SHA-256. The identity is what the gateway uses as ``RequestSpec.user`` and what may
appear in logs; the key itself is hashed on load and never stored, logged or exported. Lookups
compare SHA-256 digests, so the time a lookup takes says nothing about how close a guess was.

Limits: tier -> requests per minute, from the scenario's ``workload.tiers`` (``rpm: null`` =
unlimited), else the defaults below (the production tiers of Public AI's API). The window is the
simulator's: fixed 60-second windows counted from the gateway's start (``int(t / 60)``), so a key
gets ``rpm`` requests per window and a request over it gets 429 with ``Retry-After`` = whole
seconds until the window ends.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from publicai_lab.errors import GatewayError

__all__ = ["KeyInfo", "KeyStore", "RateLimiter", "DEFAULT_TIER_RPM", "load_api_keys", "ENV_KEYS", "ENV_KEYS_FILE"]

#: requests per minute per key when the scenario does not say (None = unlimited)
DEFAULT_TIER_RPM: dict[str, int | None] = {"free": 100, "plus": 200, "pro": 300, "enterprise": 10000}
ENV_KEYS = "PUBLICAI_API_KEYS"
ENV_KEYS_FILE = "PUBLICAI_API_KEYS_FILE"
WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the gateway knows about a caller: an identity safe to log, and a tier."""

    identity: str
    tier: str


def _digest(key: str | bytes) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    return hashlib.sha256(key).digest()


class KeyStore:
    """Hashed API keys -> :class:`KeyInfo`. ``lookup(raw_key_bytes)`` is the hot-path call."""

    def __init__(self, entries: Mapping[str, Any], *, source: str = "api keys",
                 tiers: Mapping[str, int | None] | None = None) -> None:
        self._by_digest: dict[bytes, KeyInfo] = {}
        known = None if tiers is None else set(tiers)
        for n, (key, spec) in enumerate(entries.items()):
            where = f"{source}: entry {n + 1}"  # never the key itself
            if not isinstance(key, str) or not key.strip():
                raise GatewayError(f"{where}: a key must be a non-empty string")
            if isinstance(spec, str) or spec is None:
                tier, name = spec or "free", None
            elif isinstance(spec, Mapping):
                extra = set(spec) - {"tier", "name"}
                if extra:
                    raise GatewayError(f"{where}: unknown fields {sorted(extra)}; allowed: tier, name")
                tier, name = spec.get("tier", "free"), spec.get("name")
            else:
                raise GatewayError(f"{where}: value must be a tier name or {{tier, name}}, "
                                   f"got {type(spec).__name__}")
            if not isinstance(tier, str) or not tier:
                raise GatewayError(f"{where}: tier must be a non-empty string")
            if known is not None and tier not in known:
                raise GatewayError(f"{where}: unknown tier {tier!r}; known: {', '.join(sorted(known))}")
            digest = _digest(key.strip())
            identity = str(name) if name else "key-" + digest.hex()[:12]
            self._by_digest[digest] = KeyInfo(identity, tier)

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, key: bytes) -> KeyInfo | None:
        return self._by_digest.get(hashlib.sha256(key).digest())

    def __repr__(self) -> str:  # no keys, no digests
        return f"KeyStore({len(self)} keys)"


def _parse_env(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, tier = item.partition(":")
        out[key.strip()] = tier.strip() or "free"
    return out


def load_api_keys(source: "str | os.PathLike[str] | Mapping[str, Any] | KeyStore | None" = None, *,
                  tiers: Mapping[str, int | None] | None = None,
                  environ: Mapping[str, str] | None = None) -> KeyStore | None:
    """A :class:`KeyStore` from a mapping, a YAML/JSON file, or (when ``source`` is None) the
    environment; ``None`` when no keys are configured anywhere (auth off)."""
    if isinstance(source, KeyStore):
        return source
    if isinstance(source, Mapping):
        return KeyStore(source, source="api_keys", tiers=tiers)
    env = os.environ if environ is None else environ
    if source is None:
        if env.get(ENV_KEYS):
            return KeyStore(_parse_env(env[ENV_KEYS]), source=f"${ENV_KEYS}", tiers=tiers)
        if env.get(ENV_KEYS_FILE):
            source = env[ENV_KEYS_FILE]
        else:
            return None
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayError(f"api keys file {str(path)!r}: cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # no echo of the content: it holds keys
        raise GatewayError(f"api keys file {str(path)!r}: not valid {path.suffix.lstrip('.') or 'YAML'} "
                           f"({type(exc).__name__})") from None
    if not isinstance(data, Mapping):
        raise GatewayError(f"api keys file {str(path)!r}: must be a mapping key -> tier")
    return KeyStore(data, source=f"api keys file {str(path)!r}", tiers=tiers)


class RateLimiter:
    """Fixed one-minute windows per identity, counted from ``t0`` (the simulator's rule).

    ``check(identity, rpm, now)`` returns 0 when the request may pass (and counts it), else the
    whole seconds to wait (for ``Retry-After``). Memory: one small list per identity seen in the
    current window; identities from older windows are dropped when a new window starts.
    """

    def __init__(self) -> None:
        self._window = -1
        self._counts: dict[str, int] = {}

    def check(self, identity: str, rpm: int | None, now_s: float) -> int:
        if rpm is None:
            return 0
        window = int(now_s // WINDOW_S)
        if window != self._window:
            self._window = window
            self._counts = {}
        counts = self._counts
        n = counts.get(identity, 0)
        if n >= rpm:
            return max(1, math.ceil((window + 1) * WINDOW_S - now_s))
        counts[identity] = n + 1
        return 0
