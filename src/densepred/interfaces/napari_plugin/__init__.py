"""densepred in napari: a dock widget (Plugins > densepred > Dense prediction) and sample data.

Install with ``pip install 'densepred[napari]'`` (plus a Qt binding, e.g. ``napari[pyqt6]``).
The manifest is ``napari.yaml`` beside this file, registered by the ``napari.manifest`` entry
point. :mod:`.request` and :mod:`.task` hold the logic and need no Qt; :mod:`.widget` is the
form on top of them.
"""
