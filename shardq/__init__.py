"""shardq: coordinate distributed AI training on AWS through Amazon SQS.

``shardq.core`` holds the contracts and logic the Lambdas run; the CLI, the worker
runtime and the local cloud live beside it and import it, never the other way round.
"""

__version__ = "0.1.0"
