"""Lambda handlers: thin adapters that parse the event, call ``shardq.core`` and respond."""
