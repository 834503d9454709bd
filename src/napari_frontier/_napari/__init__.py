"""The napari plugin: the only part of napari-frontier that imports Qt or napari.

Contributions are listed in ``napari.yaml``: the "Scribble trainer" dock
widget (:class:`~.widget.FrontierWidget`), sample data and a mask writer.

Modules:

- ``widget``: the dock widget, layout and wiring only;
- ``session``: :class:`~.session.TrainingSession`, the worker's lifecycle and the model;
  its satellites:
  - ``edits``: scribble edits (paint and data events, mirror, debounce) to the live trainer;
  - ``overlays``: overlay redraws, latency log, following the view, *Suggest*;
  - ``jobs``: background jobs (preview, apply, predict volume, warm-up) and exports;
- ``layers``: finding, making and styling the plugin's layers (overlays, masks, shapes);
- ``_projects``: autosave, restore and projects; ``_pickers``: layer pickers and the
  settings form; ``_plot``: the training curves; ``app``: napari with the widget docked;
- ``_sample_data``, ``_writer``: the npe2 sample data and mask writer.
"""
