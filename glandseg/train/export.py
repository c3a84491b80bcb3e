"""Turn a training run into a bundled model whose model card describes the shipped files.

``export_model`` writes ``NAME.safetensors`` (fp16) and ``NAME.json`` (the model config plus
a ``model_card``) into the package's ``weights`` folder (or ``dest``). With ``data`` (a GlaS
folder) it then evaluates the *exported fp16 files themselves* on Test A/B, keeps the
evaluation outputs beside them in ``NAME.eval/`` (``metrics.json``, ``per_image.csv``, their
``_split_gt`` versions, leaderboards, Fig. 4) and fills the card's figures from them. The
card's training command is generated from the run's recorded arguments, never hand-typed;
it also records the git commit, library versions, the machine and the training time.

Chosen otherwise than by the run's own rule (its best epoch, post-processing tuned on
validation): ``--checkpoint last`` ships the last epoch, ``--postprocess JSON`` replaces
post-processing parameters, ``--note TEXT`` says how they were chosen; all three go into the
card. ``--deblur`` (default ``auto``, as ``glandseg evaluate``) is the setting the test
evaluation runs with, also recorded.

Usage: ``python -m glandseg.train.export RUN_DIR NAME --data GLAS [--trained-on TEXT]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from glandseg import GlandsegError
from glandseg.models import registry
from glandseg.train import checkpoint as ckpt

log = logging.getLogger(__name__)

#: Evaluation outputs kept beside a bundled model (small; predictions/ is not kept).
EVAL_KEEP = ("metrics.json", "metrics_split_gt.json", "per_image.csv", "per_image_split_gt.csv",
             "leaderboard.txt", "leaderboard_split_gt.txt", "fig4_testA.png", "fig4_testB.png",
             "settings.json")

# TrainConfig field → CLI flag (the train verb's options), in the order they are printed.
_FLAGS = (("model", "--model"), ("epochs", "--epochs"), ("batch_size", "--batch-size"),
          ("lr", "--lr"), ("optimizer", "--optimizer"), ("weight_decay", "--weight-decay"),
          ("schedule", "--schedule"), ("crop", "--crop"), ("scale", "--scale"),
          ("tile", "--tile"), ("repeats", "--repeats"), ("workers", "--workers"),
          ("val_fraction", "--val-fraction"), ("val_every", "--val-every"),
          ("max_minutes", "--max-minutes"), ("seed", "--seed"), ("preset", "--preset"),
          ("device", "--device"))


def train_command(train: dict, data: str = "GLAS", out: str = "RUN") -> str:
    """The ``glandseg train`` command that reproduces a run, from its recorded arguments
    (``config.json``'s ``train`` dict)."""
    parts = ["glandseg", "train"]
    for key, flag in _FLAGS:
        v = train.get(key)
        if v is None or (key == "device" and v == "auto"):
            continue
        parts += [flag, str(v)]
    parts += ["--data", data, "--out", out]
    if train.get("pretrained") is False:
        parts += ["--pretrained", "none"]
    if train.get("tune_postprocess") is False:
        parts.append("--no-tune")
    if train.get("model_args"):
        parts += ["--model-args", json.dumps(train["model_args"], sort_keys=True)]
    if train.get("init"):
        parts += ["--init", str(train["init"])]
    if train.get("robust"):
        parts.append("--robust")
        if train.get("robust_p", 0.5) != 0.5:
            parts += ["--robust-p", str(train["robust_p"])]
    if train.get("consistency"):
        parts += ["--consistency", str(train["consistency"])]
    return shlex.join(parts)


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
        return sha + ("+uncommitted changes" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def _versions() -> dict:
    import timm
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__}


def _training_record(run: Path, cfg: dict, trained_on: str) -> dict:
    from glandseg.train.runstate import run_history

    hist = run_history(run)
    val = cfg.get("validation", {})
    return {
        "machine": trained_on or cfg.get("train", {}).get("machine", "not recorded"),
        "minutes": round(sum(float(r.get("seconds", 0)) for r in hist) / 60, 1) if hist else None,
        "epochs_run": len(hist) or None,
        "best_epoch": (val.get("best") or {}).get("epoch"),
        "validation_at_best_epoch": val.get("best"),
        "validation_tuned_object_dice": val.get("tuned_object_dice"),
        "train_images": len(cfg.get("train", {}).get("train_images", [])),
        "validation_images": cfg.get("train", {}).get("val_images", []),
    }


def export_model(run: str | Path, name: str, data: str | Path | None = None,
                 dest: str | Path | None = None, trained_on: str = "",
                 eval_dir: str | Path | None = None, device: str = "cpu",
                 checkpoint: str = "best", postprocess: dict | None = None,
                 deblur: str = "auto", note: str = "") -> Path:
    """Export ``run`` as bundled model ``name`` (see the module docstring). ``data``: a GlaS
    folder to evaluate the exported files on; or ``eval_dir``: an existing evaluation of
    them to read the figures from. ``checkpoint``: ``best`` or ``last``; ``postprocess``:
    parameters replacing the run's; ``deblur``: the evaluation's setting. Returns the
    weights path."""
    from glandseg.models.config import postprocess_params
    from glandseg.models.store import load_model, resolve_model

    run = Path(run)
    if checkpoint not in ("best", "last"):
        raise GlandsegError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if deblur not in ("auto", "off"):
        raise GlandsegError(f"deblur must be 'auto' or 'off', got {deblur!r}")
    if postprocess is not None and not isinstance(postprocess, dict):
        raise GlandsegError("postprocess must be a JSON object of parameters, e.g. "
                            '{"interior_threshold": 0.5}; got ' + repr(postprocess))
    cfg, weights = resolve_model(str(run))
    if weights is None:
        raise GlandsegError(f"{run}: no trained weights")
    if checkpoint == "last":
        weights = run / "last.safetensors"
        if not weights.is_file():
            raise GlandsegError(f"{weights}: missing; export the best epoch instead")
    if postprocess:
        cfg["postprocess"] = postprocess_params(cfg["task"], {**cfg["postprocess"],
                                                               **postprocess}).as_dict()
    model = registry.build_model(cfg, pretrained=False)
    ckpt.load_weights(model, weights)
    dest = Path(dest) if dest else Path(str(resources.files("glandseg.weights")))
    train = cfg.get("train", {})
    card = {
        "name": name,
        "data": "GlaS@MICCAI'2015 training part: trained on "
                f"{len(train.get('train_images', []))} images, validated on "
                f"{len(train.get('val_images', []))} images of held-out patients; every choice "
                "(recipe, epoch, post-processing) made on validation, never on Test A/B",
        "command": train_command(train),
        "training": _training_record(run, cfg, trained_on),
        "provenance": {"git_commit": _git_commit(), **_versions(),
                       "exported": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                       "export_machine": f"{platform.machine()} {platform.node()}"},
        "weights": "fp16 safetensors; every figure below was measured on these fp16 files",
        "checkpoint": checkpoint,
        "inference": {"deblur": deblur},
    }
    if checkpoint == "last":
        card["training"]["shipped_epoch"] = card["training"]["epochs_run"]
    if postprocess:
        card["postprocess_replaced"] = postprocess
    if note:
        card["selection"] = note
    if train.get("init"):  # fine-tuned: name the starting weights (before any overwrite)
        import hashlib

        src = Path(train.get("init_weights") or "")
        card["init"] = {"model": train["init"], "weights": src.name,
                        "weights_sha256": hashlib.sha256(src.read_bytes()).hexdigest()
                        if src.is_file() else "not available at export"}
    out_cfg = {k: v for k, v in cfg.items() if k != "train"}
    out_cfg["train"] = {k: train.get(k) for k in ("stages", "crop", "scale", "tile", "repeats",
                                                  "seed", "max_minutes", "init", "robust",
                                                  "robust_p", "consistency")}
    out_cfg["model_card"] = card
    wpath = dest / f"{name}.safetensors"
    ckpt.save_weights(wpath, model, half=True, metadata={"name": name})
    ckpt.save_json(dest / f"{name}.json", out_cfg)
    if data is not None:
        eval_dir = dest / f"{name}.eval"
        _evaluate_export(wpath, name, data, eval_dir, device, deblur)
    if eval_dir is not None:
        card.update(_figures(Path(eval_dir)))
        ckpt.save_json(dest / f"{name}.json", out_cfg)
    log.info("exported %s → %s", run, wpath)
    # the shipped files must load as they are
    load_model(str(wpath))
    return wpath


def _evaluate_export(wpath: Path, name: str, data: str | Path, eval_dir: Path,
                     device: str, deblur: str = "auto") -> None:
    """Evaluate the exported files on Test A/B; keep the small outputs in ``eval_dir``."""
    from glandseg.infer.predictor import Predictor
    from glandseg.report.evaluate import evaluate_model

    tmp = eval_dir.with_name(eval_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pred = Predictor.from_name(str(wpath), device=device,
                               deblur=None if deblur == "off" else deblur)
    evaluate_model(pred, data, tmp, name=name)
    shutil.rmtree(tmp / "predictions", ignore_errors=True)
    for f in list(tmp.iterdir()):  # evaluate also writes error overlays, the report, ...
        if f.name not in EVAL_KEEP:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    shutil.rmtree(eval_dir, ignore_errors=True)
    tmp.rename(eval_dir)


def _figures(eval_dir: Path) -> dict:
    """The card's figures, read from an evaluation folder."""
    metrics = ckpt.load_json(eval_dir / "metrics.json")
    parts = [p for p in ("testA", "testB") if p in metrics]
    out = {"evaluation": f"{eval_dir.name}/ (outputs of `glandseg evaluate` on the exported "
                         "files)",
           "official_metrics": {p: metrics[p]["pooled"] for p in parts},
           "per_image_mean": {p: metrics[p]["per_image"] for p in parts}}
    lb = eval_dir / "leaderboard.txt"
    out["leaderboard"] = lb.read_text(encoding="utf-8") if lb.is_file() else ""
    split = eval_dir / "metrics_split_gt.json"
    if split.is_file():
        sm = ckpt.load_json(split)
        out["official_metrics_split_gt"] = {p: sm[p]["pooled"] for p in parts if p in sm}
        out["per_image_mean_split_gt"] = {p: sm[p]["per_image"] for p in parts if p in sm}
        slb = eval_dir / "leaderboard_split_gt.txt"
        out["leaderboard_split_gt"] = slb.read_text(encoding="utf-8") if slb.is_file() else ""
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="training run folder")
    p.add_argument("name", help="bundled model name, e.g. glas-unet")
    p.add_argument("--data", default=None, help="GlaS folder: evaluate the exported files")
    p.add_argument("--eval-dir", default=None, help="or: an evaluation of them to read")
    p.add_argument("--dest", default=None, help="default: the package's weights folder")
    p.add_argument("--trained-on", default="", help="the training machine, in words")
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which epoch's weights to ship (default: best)")
    p.add_argument("--postprocess", default=None, metavar="JSON",
                   help='post-processing parameters replacing the run\'s, e.g. '
                        '\'{"interior_threshold": 0.5}\'')
    p.add_argument("--deblur", choices=("auto", "off"), default="auto",
                   help="--deblur of the test evaluation (default: auto, as glandseg evaluate)")
    p.add_argument("--note", default="", help="how the checkpoint/post-processing were chosen")
    a = p.parse_args(argv)
    try:
        post = json.loads(a.postprocess) if a.postprocess else None
    except json.JSONDecodeError as e:
        raise SystemExit(f"--postprocess: not JSON ({e}): give e.g. "
                         '\'{"interior_threshold": 0.5}\'') from None
    print(export_model(a.run, a.name, a.data, a.dest, a.trained_on, a.eval_dir, a.device,
                       a.checkpoint, post, a.deblur, a.note))


if __name__ == "__main__":
    main()
