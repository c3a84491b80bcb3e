"""``glandseg demo``: the one-command tour. Without data it segments a real colon-tissue
image that ships with scikit-image; with ``--data`` it evaluates on GlaS Test A and B."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from glandseg.cli.predict_cmd import add_model_args, make_predictor

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="segment a bundled example image (or evaluate on GlaS with --data)",
        description="Without --data: segments skimage.data.immunohistochemistry() (colon "
                    "tissue) with the bundled model and writes labels, overlay, GeoJSON and "
                    "glands.csv. With --data DIR: runs `glandseg evaluate` on DIR.",
    )
    p.add_argument("--out", default="glandseg-demo", help="output folder (default: glandseg-demo)")
    p.add_argument("--data", default=None, help="GlaS folder: evaluate on Test A and B")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.data:
        from glandseg.cli import evaluate_cmd

        args.name, args.limit = None, None
        return evaluate_cmd.run(args)
    from skimage import data

    from glandseg.data.io import write_image
    from glandseg.infer.batch import predict_files

    image = data.immunohistochemistry()
    src = out / "input" / "immunohistochemistry.png"
    write_image(src, image)
    pred = make_predictor(args)
    rep = predict_files([src], out, pred, mpp=None)
    print(f"demo: {rep.n_glands} gland(s) in skimage.data.immunohistochemistry() → {out}/ "
          "(immunohistochemistry.png labels, _overlay.png, .geojson, glands.csv)")
    return 0
