"""glandseg: gland instance segmentation in H&E histology images.

Stages, one sub-package each: :mod:`glandseg.data` (discover, read, augment),
:mod:`glandseg.models` (U-Net, Mask R-CNN, registry), :mod:`glandseg.train`
(training engine, checkpoints), :mod:`glandseg.infer` (Predictor, post-processing),
:mod:`glandseg.metrics` (official GlaS metrics), :mod:`glandseg.report` (outputs,
leaderboard, figures) and :mod:`glandseg.cli` (the ``glandseg`` command).

A *label image* everywhere is a 2-D integer array, 0 = background, 1..N = one gland each.
"""

__version__ = "0.1.0"


class GlandsegError(Exception):
    """An error caused by the user's input (bad file, bad option), with a fix in its message.

    The CLI prints it as one line and exits with status 1.
    """
