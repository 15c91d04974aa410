"""Planning: how a prediction is cut into pieces that fit the device and its memory (the device
itself and the memory a run may use on it: :mod:`densepred.networks.devices`,
:mod:`densepred.networks.memory_budget`).

* :mod:`.tiling` - own nets: tiles and the engine (MFP, dilated, stream) for an image
* :mod:`.model_window` - models written elsewhere: the window, and their memory per voxel
* :mod:`.job_plan` - ``densepred plan``: a job sized in blocks, bytes and hours before it runs
"""
