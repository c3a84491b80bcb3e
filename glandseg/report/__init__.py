"""Reports: per-image outputs, the GlaS leaderboard and figures.

- :mod:`glandseg.report.outputs`: label PNG, overlay, QuPath GeoJSON and morphometrics
  (``glands.csv``) from a label image (2-D integer array, 0 = background, 1..N = glands).
- :mod:`glandseg.report.batch`: a batch of images into one output folder
  (``glandseg predict``): never overwrites inputs or files glandseg did not write, and
  ``glands.csv`` keeps the rows of every image in the folder (runs merge).
- :mod:`glandseg.report.leaderboard`: rank a ``metrics.json`` against the published GlaS
  results (packaged as ``published.csv``) the way the 2015 challenge did.
- :mod:`glandseg.report.figures`: training curves and the best / average / worst figure.

The sub-modules are not imported here, so that ``import glandseg.report.leaderboard``
does not pull in scikit-image or matplotlib.
"""
