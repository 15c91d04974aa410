"""Layer 6, interfaces: thin front ends that parse, call one function of :mod:`densepred.running`, print.

* :mod:`.cli` - the ``densepred`` command
* :mod:`.demo` - the end-to-end demo (``make demo``, ``densepred demo``)
"""
