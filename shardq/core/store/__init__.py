"""The parts of the job store (``shardq.core.jobstore`` is its public face; import from there).

``keys`` (keys, counter names, item (de)serialisation), ``records`` (typed records), ``update``
(UpdateExpression building), ``base`` (table, client, batch and query calls), ``counting``
(``record``) and ``results`` (reading outcomes and round summaries back).
"""
