"""The worker runtime: poll the task queue, run the user's training function, post results."""

from shardq.worker.stop import Stopped

__all__ = ["Stopped"]
