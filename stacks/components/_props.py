"""Prop validation shared by the components: collect every problem, raise once."""

from __future__ import annotations

from aws_cdk import Duration, Token
from aws_cdk import aws_logs as logs

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


# CloudWatch Logs retention periods (days) by the RetentionDays member that names them.
_RETENTION_BY_DAYS = {
    1: "ONE_DAY",
    3: "THREE_DAYS",
    5: "FIVE_DAYS",
    7: "ONE_WEEK",
    14: "TWO_WEEKS",
    30: "ONE_MONTH",
    60: "TWO_MONTHS",
    90: "THREE_MONTHS",
    120: "FOUR_MONTHS",
    150: "FIVE_MONTHS",
    180: "SIX_MONTHS",
    365: "ONE_YEAR",
    400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS",
    731: "TWO_YEARS",
    1096: "THREE_YEARS",
    1827: "FIVE_YEARS",
    3653: "TEN_YEARS",
}


def retention(days: int) -> logs.RetentionDays:
    """The CloudWatch Logs retention of ``days`` (one of the periods stacks.config accepts)."""
    return logs.RetentionDays[_RETENTION_BY_DAYS[days]]
