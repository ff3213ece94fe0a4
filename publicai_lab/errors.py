"""The error hierarchy of publicai_lab.

    PublicAILabError            root: catch this to catch everything we raise on purpose
    ├── ScenarioError           a scenario file or dict is invalid (names file, field path, value)
    ├── PolicyError             a routing policy broke the contract (unknown name, ineligible choice)
    ├── GatewayError            the live gateway could not do its job
    └── SimulationError         the simulator reached a state it cannot continue from

The CLI prints any of these as one line and exits 2; nothing else should ever reach a user as a
traceback for bad input.
"""

from __future__ import annotations


class PublicAILabError(Exception):
    """Root of every error publicai_lab raises deliberately."""


class ScenarioError(PublicAILabError, ValueError):
    """A scenario is invalid. The message is one line: ``file: field.path: got X; allowed Y``."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 value: object = None, allowed: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.field = field
        self.value = value
        self.allowed = allowed

    @classmethod
    def at(cls, source: str | None, field: str, value: object, allowed: str) -> "ScenarioError":
        """Build the canonical one-line message from its parts."""
        where = f"{source}: " if source else ""
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        line = f"{where}{field or '<root>'}: got {shown}; {allowed}"
        return cls(" ".join(line.split()), source=source, field=field, value=value, allowed=allowed)


class PolicyError(PublicAILabError):
    """A routing policy is unknown, misconfigured, or returned an ineligible decision."""


class GatewayError(PublicAILabError):
    """The live gateway failed (no backend, upstream error after retries, bad configuration)."""


class SimulationError(PublicAILabError):
    """The simulator cannot continue (a bug or an impossible configuration)."""
