"""CDK stacks for shardq: stacks compose, ``stacks.components`` build one capability each."""
