"""``glandseg demo``: the one-command tour. Without data it segments the one colon-gland image
that ships with scikit-image (immunohistochemistry, not H&E: GlaS itself may not be
redistributed, and no H&E colon image with a licence that allows shipping it was found on the
package registries); with ``--data`` it evaluates on GlaS Test A and B, where the bundled
models are at their best."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from glandseg import GlandsegError
from glandseg.cli.predict_cmd import add_model_args, make_predictor

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="segment a bundled example image (or evaluate on GlaS with --data)",
        description="Without --data: segments skimage.data.immunohistochemistry() (colonic "
                    "glands stained by immunohistochemistry, DAB brown + haematoxylin: NOT "
                    "H&E, so the H&E-trained model splits glands into pieces) and writes "
                    "labels, overlay, GeoJSON and glands.csv. With --data DIR (the GlaS "
                    "folder): runs `glandseg evaluate` on Test A and B.",
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

    from glandseg.data.io import read_image, write_image
    from glandseg.engine.predict import predict_files
    from glandseg.report.batch import plan_outputs

    image = data.immunohistochemistry()
    src = out / "input" / "immunohistochemistry.png"
    plan_outputs([src], out, "overwrite")  # --out a file, foreign outputs: refuse first
    if src.is_file():  # a re-run: keep it if it is the demo image, never replace another file
        try:
            same = bool((read_image(src) == image).all())
        except GlandsegError:
            same = False
        if not same:
            raise GlandsegError(f"{src} exists and is not the demo image; move it away or "
                                "choose another --out")
    elif src.exists():
        raise GlandsegError(f"{src} is a folder; move it away or choose another --out")
    else:
        write_image(src, image)
    pred = make_predictor(args)
    # the demo folder is the demo's: its outputs are replaced on a re-run (files glandseg
    # did not write still are not)
    rep = predict_files([src], out, pred, mpp=None, mode="overwrite",
                        progress=not getattr(args, "quiet", False))
    print(f"demo: {rep.n_glands} object(s) in skimage.data.immunohistochemistry() → {out}/ "
          "(immunohistochemistry.png labels, _overlay.png, .geojson, glands.csv). This sample "
          "is immunohistochemistry (brown DAB), not H&E: the H&E-trained model splits its ~6 "
          "glands into pieces. For H&E, run `glandseg demo --data PATH/TO/GlaS`.")
    return 0
