"""Re-rank the committed evaluations with the current leaderboard code, without re-running
any model: rewrites ``leaderboard.txt`` / ``leaderboard_split_gt.txt`` beside each committed
``metrics*.json`` (the bundled models' ``glandseg/weights/NAME.eval/`` and the earlier
bundles' ``results/previous/NAME.eval/``) exactly as ``glandseg evaluate`` writes them, and
the bundled model cards' ``leaderboard`` / ``leaderboard_split_gt`` text (nothing else in
the card changes).

    .venv/bin/python results/rerank_leaderboards.py
"""

from __future__ import annotations

import json
from pathlib import Path

from glandseg.data.io import write_text
from glandseg.report.leaderboard import format_table, load_metrics, rank

ROOT = Path(__file__).resolve().parents[1]
#: evaluation folder → the name its rows were ranked under (``glandseg evaluate --name``).
EVALS = {
    ROOT / "glandseg" / "weights" / "glas-unet.eval": "glas-unet",
    ROOT / "glandseg" / "weights" / "glas-maskrcnn.eval": "glas-maskrcnn",
    ROOT / "results" / "previous" / "glas-unet-v2.eval": "glas-unet",
    ROOT / "results" / "previous" / "glas-unet-v3.eval": "glas-unet",
}


def main() -> None:
    for folder, name in EVALS.items():
        texts = {}
        for suffix in ("", "_split_gt"):
            metrics = load_metrics(folder / f"metrics{suffix}.json")
            text = format_table(rank(metrics, name)) + "\n"  # as report/evaluate.py writes it
            write_text(folder / f"leaderboard{suffix}.txt", text)
            texts[f"leaderboard{suffix}"] = text
            print(f"{(folder / f'leaderboard{suffix}.txt').relative_to(ROOT)}")
        card_path = folder.with_suffix(".json")
        if folder.parent.name == "weights" and card_path.is_file():
            cfg = json.loads(card_path.read_text(encoding="utf-8"))
            card = cfg["model_card"]
            for key, text in texts.items():
                if key in card:
                    card[key] = text
            write_text(card_path, json.dumps(cfg, indent=2) + "\n")
            print(f"{card_path.relative_to(ROOT)} (model card leaderboards)")


if __name__ == "__main__":
    main()
