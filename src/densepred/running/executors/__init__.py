"""Executors: where pieces run beside this process - a Dask cluster, and what its workers run.

* :mod:`.cluster` - connecting to a cluster (or starting a local one), running tasks with retries
* :mod:`.blocks` - a worker's block of an own net's tiles, and a pyramid shard
* :mod:`.model_blocks` - a worker's block of a model written elsewhere (exact or blend)

In this process the pieces run through :mod:`densepred.pipeline`.
"""
