"""The coordination core: contracts, planning, fan-out, job store, aggregation.

Imports no CDK, no Lambda handler, no CLI, no worker runtime, no local cloud
(tests/unit/test_layering.py holds it to that): it is what the Lambda asset ships.
"""
