"""Computing pieces: what fills an output box, for either kind of model.

* :mod:`.tiles` - own nets' tiles through the read/compute/write pipeline
  (:mod:`densepred.pipeline`), and the engine for a tile
* :mod:`.model_run` - a model written elsewhere over an image: exact or blended windows,
  through the same pipeline
* :mod:`.windows` - one such window: read, computed (flips averaged, activated) and weighed
* :mod:`.preprocess` - bioimage.io preprocessing, measured over the whole image once
* :mod:`.sink` - checking, encoding and writing an output box; non-finite values counted
"""
