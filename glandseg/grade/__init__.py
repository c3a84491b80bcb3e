"""Benign/malignant grading of GlaS-like H&E images.

- :mod:`glandseg.grade.features`: gland morphometrics from a label image and pooled
  encoder features of the segmentation network;
- :mod:`glandseg.grade.classifier`: the grader (a standardised logistic regression stored
  as JSON) and the grading metrics;
- :mod:`glandseg.grade.engine`: :class:`~glandseg.grade.engine.ImageGrader`, grading images
  with the segmentation model the grader was fit on;
- :mod:`glandseg.grade.fit`: patient-wise cross-validated fitting (scikit-learn;
  ``python -m glandseg.grade.fit``).

Imports go down only: ``grade`` uses ``infer``, ``models`` and ``data``; ``report`` and
``cli`` use ``grade``.
"""
