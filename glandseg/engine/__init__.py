"""The pipelines a user runs, one module each; the CLI, the API and ``export`` call them.

- :mod:`glandseg.engine.predict`: files into an output folder (``glandseg predict``, ``demo``);
- :mod:`glandseg.engine.slide`: one whole slide or large image, by region (Dask optional);
- :mod:`glandseg.engine.evaluate`: GlaS Test A/B predicted, scored, ranked, reported
  (``glandseg evaluate``, ``train.export``);
- :mod:`glandseg.engine.grade`: benign/malignant grades of files (``glandseg grade``) and the
  grading step of an evaluation.

Layer: the engine drives ``infer`` and ``grade`` and hands results to ``report``; it sits
below ``train``, ``search`` and ``cli`` (../shared/DESIGN.md). Sub-modules are not imported
here, so that ``import glandseg.engine.grade`` does not load a network.
"""
