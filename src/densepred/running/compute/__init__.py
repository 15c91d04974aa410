"""Computing pieces: what fills an output box, for either kind of model.

* :mod:`.pipeline` - reading, computing and writing at the same time
* :mod:`.tiles` - own nets' tiles through the pipeline, and the engine for a tile
* :mod:`.model_run` - a model written elsewhere over an image: exact or blended windows
* :mod:`.preprocess` - bioimage.io preprocessing, measured over the whole image once
* :mod:`.sink` - checking, encoding and writing an output box; non-finite values counted
* :mod:`.downsample` - one shard of a pyramid level from the level below
"""
