"""Layer 6, interfaces: thin front ends that parse, call one function of :mod:`densepred.running`, print.

* :mod:`.cli` - the ``densepred`` command
* :mod:`.demo` - the end-to-end demo (``make demo``, ``densepred demo``)
* :mod:`.model_options` - ``densepred predict``'s options for a model written elsewhere
* :mod:`.zoo_command`, :mod:`.zoo_test` - ``densepred test-model``: a bioimage.io package's own test
* :mod:`.elektronn_command` - ``densepred import-elektronn``
"""
