"""Reports: the files glandseg writes (it imports only ``data``, ``models`` and ``metrics``;
the pipelines that run models are in :mod:`glandseg.engine`).

- :mod:`glandseg.report.outputs`: label PNG, overlay, QuPath GeoJSON and morphometrics
  (``glands.csv``) from a label image (2-D integer array, 0 = background, 1..N = glands).
- :mod:`glandseg.report.batch`: the output folder of ``glandseg predict`` (records, lock,
  joined ``glands.csv`` / ``images.csv`` / ``index.html``): never overwrites inputs or files
  glandseg did not write, and ``glands.csv`` keeps the rows of every image (runs merge);
- :mod:`glandseg.report.slide`: a whole slide's pyramidal label TIFF, GeoJSON and overlay;
- :mod:`glandseg.report.evaluate`, :mod:`glandseg.report.grading`,
  :mod:`glandseg.report.error_overlay`, :mod:`glandseg.report.html`: an evaluation's metrics,
  leaderboard, grades, error overlays and ``report.html``.
- :mod:`glandseg.report.leaderboard`: rank a ``metrics.json`` against the published GlaS
  results (packaged as ``published.csv``) the way the 2015 challenge did.
- :mod:`glandseg.report.figures`: training curves and the best / average / worst figure.

The sub-modules are not imported here, so that ``import glandseg.report.leaderboard``
does not pull in scikit-image or matplotlib.
"""
