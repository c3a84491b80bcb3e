"""Turn a training run into a bundled model: ``glandseg/weights/NAME.safetensors`` (fp16)
plus ``NAME.json`` (the model config with a model card: data, recipe, command, official
Test A/B figures and the leaderboard place, all read from the run and its evaluation).

Usage: ``python -m glandseg.train.export RUN_DIR EVAL_DIR NAME [--command "..."]``.
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources
from pathlib import Path

from glandseg import GlandsegError
from glandseg.models import registry
from glandseg.train import checkpoint as ckpt

log = logging.getLogger(__name__)


def export_model(run: str | Path, eval_dir: str | Path, name: str, command: str = "",
                 dest: str | Path | None = None) -> Path:
    """Write ``NAME.safetensors`` (fp16) and ``NAME.json`` into ``dest`` (default: the
    package's ``weights`` folder). Returns the weights path."""
    run, eval_dir = Path(run), Path(eval_dir)
    cfg, weights = ckpt.resolve_model(str(run))
    if weights is None:
        raise GlandsegError(f"{run}: no trained weights")
    metrics = ckpt.load_json(eval_dir / "metrics.json")
    lb = eval_dir / "leaderboard.txt"
    model = registry.build_model(cfg, pretrained=False)
    ckpt.load_weights(model, weights)
    dest = Path(dest) if dest else Path(str(resources.files("glandseg.weights")))
    card = {
        "name": name,
        "data": "GlaS@MICCAI'2015 training part (85 images); validation on held-out patients "
                f"({len(cfg.get('train', {}).get('val_images', []))} images), never on Test A/B",
        "recipe": {k: cfg.get("train", {}).get(k) for k in
                   ("model", "stages", "crop", "repeats", "seed", "val_fraction")},
        "command": command,
        "official_metrics": {p: metrics[p]["pooled"] for p in ("testA", "testB") if p in metrics},
        "per_image_mean": {p: metrics[p]["per_image"] for p in ("testA", "testB") if p in metrics},
        "leaderboard": lb.read_text(encoding="utf-8") if lb.is_file() else "",
    }
    split = eval_dir / "metrics_split_gt.json"
    if split.is_file():
        sm = ckpt.load_json(split)
        card["official_metrics_split_gt"] = {p: sm[p]["pooled"] for p in ("testA", "testB")
                                             if p in sm}
        slb = eval_dir / "leaderboard_split_gt.txt"
        card["leaderboard_split_gt"] = slb.read_text(encoding="utf-8") if slb.is_file() else ""
    out_cfg = {k: v for k, v in cfg.items() if k != "train"}
    out_cfg["train"] = {k: cfg.get("train", {}).get(k) for k in ("stages", "crop", "seed")}
    out_cfg["model_card"] = card
    ckpt.save_weights(dest / f"{name}.safetensors", model, half=True,
                      metadata={"name": name})
    ckpt.save_json(dest / f"{name}.json", out_cfg)
    log.info("exported %s → %s", run, dest / f"{name}.safetensors")
    return dest / f"{name}.safetensors"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run")
    p.add_argument("eval_dir")
    p.add_argument("name")
    p.add_argument("--command", default="")
    p.add_argument("--dest", default=None)
    a = p.parse_args(argv)
    print(export_model(a.run, a.eval_dir, a.name, a.command, a.dest))


if __name__ == "__main__":
    main()
