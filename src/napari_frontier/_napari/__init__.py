"""The napari plugin: the only part of napari-frontier that imports Qt or napari.

Contributions are listed in ``napari.yaml``: the "Scribble trainer" dock
widget (:class:`~.widget.FrontierWidget`), sample data and a mask writer.
"""
