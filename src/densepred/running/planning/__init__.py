"""Planning: how a prediction is cut into pieces that fit the device and its memory.

* :mod:`.devices` - choosing a device, and the memory format a model runs fastest in
* :mod:`.memory_budget` - the memory a piece may use, and what a piece costs
* :mod:`.tiling` - own nets: tiles and the engine (MFP, dilated, stream) for an image
* :mod:`.model_window` - models written elsewhere: the window, and their memory per voxel
* :mod:`.job_plan` - ``densepred plan``: a job sized in blocks, bytes and hours before it runs
"""
