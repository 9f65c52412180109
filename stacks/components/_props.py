"""Prop validation shared by the components: collect every problem, raise once."""

from __future__ import annotations

from aws_cdk import Duration, Token

SQS_MAX_VISIBILITY_SECONDS = 43_200
VISIBILITY_PER_CONSUMER_TIMEOUT = 6  # AWS: queue visibility >= 6 x the consuming function's timeout


class ComponentPropsError(ValueError):
    """A component was given props that cannot work together; the message lists every problem."""


class Problems:
    """Collects prop problems so a component reports all of them in one error."""

    def __init__(self, component: str) -> None:
        self._component = component
        self._items: list[str] = []

    def require(self, ok: bool, problem: str) -> None:
        """Record ``problem`` (which should say what to change) unless ``ok``."""
        if not ok:
            self._items.append(problem)

    def raise_if_any(self) -> None:
        """Raise :class:`ComponentPropsError` naming every recorded problem."""
        if self._items:
            raise ComponentPropsError(f"{self._component}: invalid props:\n  - " + "\n  - ".join(self._items))


def seconds(duration: Duration) -> int:
    """Whole seconds of a concrete (non-token) duration."""
    if Token.is_unresolved(duration.to_seconds()):
        raise ComponentPropsError("durations given to shardq components must be concrete, not tokens")
    return int(duration.to_seconds())


def consumer_visibility(consumer_timeout: Duration) -> Duration:
    """Visibility timeout for a queue consumed by a Lambda event source: 6 x its timeout."""
    return Duration.seconds(VISIBILITY_PER_CONSUMER_TIMEOUT * seconds(consumer_timeout))
