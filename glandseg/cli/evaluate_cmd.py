"""``glandseg evaluate``: predict GlaS Test A and B and score them officially."""

from __future__ import annotations

import argparse

from glandseg.cli import add_jobs_arg, int_in
from glandseg.cli.predict_cmd import add_model_args, make_predictor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="predict GlaS Test A/B, official metrics, leaderboard, Fig. 4",
        description="Writes predictions/, metrics.json (shape of `glandseg score` plus bce, "
                    "count_score, pixel_dice), per_image.csv, leaderboard.txt/.csv and "
                    "fig4_testA.png / fig4_testB.png to --out.",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, help="GlaS folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default=None, help="name in the leaderboard (default: the model)")
    p.add_argument("--limit", type=int_in(1, 100_000), default=None,
                   help="only the first N images of each part (a quick check: metrics.json "
                        "marks the parts \"partial\", the leaderboard does not rank them)")
    from glandseg.cli.grade_cmd import add_grader_args

    add_grader_args(p)
    add_jobs_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from glandseg.engine.evaluate import check_out_dir, evaluate_model
    from glandseg.metrics.score import format_table

    check_out_dir(args.out)  # before loading the model
    pred = make_predictor(args)
    metrics = evaluate_model(pred, args.data, args.out, name=args.name or str(args.model),
                             limit=args.limit, progress=not getattr(args, "quiet", False),
                             grader=False if getattr(args, "no_grade", False)
                             else getattr(args, "grader", None),
                             jobs=getattr(args, "jobs", None))
    partial = [f"{part} {m['n_images']} of {m['n_images_total']}" for part, m in metrics.items()
               if m.get("partial")]
    if partial:
        print(f"GlaS metrics on PARTIAL test parts ({', '.join(partial)} images; not the "
              "official figures), annotations as given:")
    else:
        print("Official GlaS metrics, annotations as given:")
    print(format_table(metrics))
    for suffix, title in (("", "as given"), ("_split_gt", "ground-truth regions split")):
        lb = Path(args.out) / f"leaderboard{suffix}.txt"
        if lb.is_file():
            print(f"\nLeaderboard ({title}):")
            print(lb.read_text(encoding="utf-8"))
    grading = Path(args.out) / "grading.json"
    if not getattr(args, "no_grade", False) and grading.is_file():
        import json

        from glandseg.report.grading import format_grading

        print("\nGrading (benign / malignant):")
        print(format_grading(json.loads(grading.read_text(encoding="utf-8"))))
    print(f"results in {args.out} (open report.html)")
    return 0
