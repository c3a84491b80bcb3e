"""Turn a training run into a bundled model whose model card describes the shipped files,
and evaluate a bundled model on Test A/B as a separate, recorded step.

Export (no test data touched)::

    python -m glandseg.train.export RUN_DIR NAME --selection TEXT [--note TEXT]
        [--training-data TEXT] [--checkpoint best|last] [--postprocess JSON] [--dest DIR]

writes ``NAME.safetensors`` (fp16) and ``NAME.json`` (the model config plus a
``model_card``) into the package's ``weights`` folder (or ``--dest``). The card is built from
recorded facts only: the training command generated from the run's recorded arguments
(never hand-typed), the images it trained and validated on, the run's validation record,
the git commit, library versions, the machine and the training time, and what the person
exporting states: ``--selection`` (required: how the checkpoint and settings were chosen),
``--note`` and ``--training-data`` (e.g. that the training images were JPEG copies).
Chosen otherwise than by the run's own rule (its best epoch, post-processing tuned on
validation): ``--checkpoint last`` ships the last epoch and ``--postprocess JSON``
replaces post-processing parameters; both go into the card. ``--deblur`` (default
``auto``, as ``glandseg evaluate``) is the inference setting recorded in the card.

Test evaluation (explicit, recorded)::

    python -m glandseg.train.export evaluate NAME --data GLAS --why TEXT
        [--dest DIR] [--ledger results/test_ledger.csv]

evaluates the *exported fp16 files themselves* on Test A/B (with the card's ``deblur``),
keeps the evaluation outputs beside them in ``NAME.eval/`` (``metrics.json``,
``per_image.csv``, their ``_split_gt`` versions, leaderboards, Fig. 4, ``settings.json``),
fills the card's figures from them and appends one row to the ledger of test evaluations
(:data:`LEDGER_FIELDS`: UTC date, model, weights SHA-256, command, why). A weights file
already in the ledger is evaluated again only with ``--again`` (that row is recorded too).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
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
from glandseg.data.io import write_text
from glandseg.models import registry
from glandseg.train import checkpoint as ckpt

log = logging.getLogger(__name__)

#: Evaluation outputs kept beside a bundled model (small; predictions/ is not kept).
EVAL_KEEP = ("metrics.json", "metrics_split_gt.json", "per_image.csv", "per_image_split_gt.csv",
             "leaderboard.txt", "leaderboard_split_gt.txt", "fig4_testA.png", "fig4_testB.png",
             "settings.json")

#: Columns of the ledger of test evaluations (``results/test_ledger.csv``).
LEDGER_FIELDS = ("date", "model", "weights_sha256", "command", "why")
#: Default ledger, relative to the working directory (a source checkout's root).
DEFAULT_LEDGER = Path("results") / "test_ledger.csv"

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


def _training_record(run: Path, cfg: dict, trained_on: str, checkpoint: str = "best",
                     postprocess: dict | None = None) -> dict:
    """What the run recorded about its training, and which checkpoint its validation
    figures belong to (they are the run's best epoch with the run's post-processing)."""
    from glandseg.train.runstate import run_history

    hist = run_history(run)
    val = cfg.get("validation", {})
    best_epoch = (val.get("best") or {}).get("epoch")
    rec = {
        "machine": trained_on or cfg.get("train", {}).get("machine", "not recorded"),
        "minutes": round(sum(float(r.get("seconds", 0)) for r in hist) / 60, 1) if hist else None,
        "epochs_run": len(hist) or None,
        "best_epoch": best_epoch,
        "validation_at_best_epoch": val.get("best"),
        "validation_tuned_object_dice": val.get("tuned_object_dice"),
        "train_images": len(cfg.get("train", {}).get("train_images", [])),
        "validation_images": cfg.get("train", {}).get("val_images", []),
    }
    shipped = rec["epochs_run"] if checkpoint == "last" else best_epoch
    if checkpoint == "last":
        rec["shipped_epoch"] = shipped
    what = (f"validation_at_best_epoch and validation_tuned_object_dice are the run's figures "
            f"for its best epoch ({best_epoch}) with the run's own post-processing, measured "
            "on the run's fp32 weights")
    if checkpoint == "last" and shipped != best_epoch:
        what += f"; the shipped checkpoint is the last epoch ({shipped}), not that one"
    if postprocess:
        what += "; the shipped post-processing replaces the run's (postprocess_replaced)"
    if (checkpoint == "last" and shipped != best_epoch) or postprocess:
        what += ", so these are not the shipped model's validation figures"
    rec["validation_figures"] = what
    return rec


def export_model(run: str | Path, name: str, dest: str | Path | None = None,
                 trained_on: str = "", eval_dir: str | Path | None = None,
                 checkpoint: str = "best", postprocess: dict | None = None,
                 deblur: str = "auto", note: str = "", *, selection: str,
                 training_data: str = "") -> Path:
    """Export ``run`` as bundled model ``name`` (see the module docstring); no test data
    is read. ``selection`` (required, non-empty): how the checkpoint and settings were
    chosen, in words, stored as the card's ``selection``; ``note``: anything else the card
    should say; ``training_data``: what the training images were, if not the run's data
    folder as is (e.g. JPEG copies). ``eval_dir``: an existing evaluation of these files
    to read the figures from. ``checkpoint``: ``best`` or ``last``; ``postprocess``:
    parameters replacing the run's; ``deblur``: the inference setting recorded in the card
    (and used by :func:`evaluate_test`). Returns the weights path."""
    from glandseg.models.config import postprocess_params
    from glandseg.models.store import load_model, resolve_model

    run = Path(run)
    if not isinstance(selection, str) or not selection.strip():
        raise GlandsegError("--selection is required: say how the checkpoint and settings were "
                            "chosen (e.g. 'best validation epoch of the run; post-processing "
                            "tuned on validation'); it is written into the model card")
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
                f"{len(train.get('val_images', []))} images of held-out patients",
        "training_data": training_data.strip() or (
            f"the images of the run's data folder ({train.get('data', 'not recorded')}) as "
            "they were"),
        "command": train_command(train),
        "training": _training_record(run, cfg, trained_on, checkpoint, postprocess),
        "provenance": {"git_commit": _git_commit(), **_versions(),
                       "exported": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                       "export_machine": f"{platform.machine()} {platform.node()}"},
        "weights": "fp16 safetensors; the test figures (official_metrics*) are measured on "
                   "these fp16 files; the training record's validation figures on the run's "
                   "fp32 weights",
        "checkpoint": checkpoint,
        "inference": {"deblur": deblur},
        "selection": selection.strip(),
        "test_evaluation": "none yet: Test A/B are evaluated only by "
                           "'python -m glandseg.train.export evaluate NAME --data GLAS --why "
                           "TEXT', which records it in the ledger of test evaluations",
    }
    if postprocess:
        card["postprocess_replaced"] = postprocess
    if note.strip():
        card["note"] = note.strip()
    if train.get("init"):  # fine-tuned: name the starting weights (before any overwrite)
        src = Path(train.get("init_weights") or "")
        card["init"] = {"model": train["init"], "weights": src.name,
                        "weights_sha256": sha256_file(src) if src.is_file()
                        else "not available at export"}
    out_cfg = {k: v for k, v in cfg.items() if k != "train"}
    out_cfg["train"] = {k: train.get(k) for k in ("stages", "crop", "scale", "tile", "repeats",
                                                  "seed", "max_minutes", "init", "robust",
                                                  "robust_p", "consistency")}
    out_cfg["model_card"] = card
    if eval_dir is not None:
        card.update(_figures(Path(eval_dir)))
        card["test_evaluation"] = (f"figures read from an existing evaluation ({eval_dir}) "
                                   "of these files")
    wpath = dest / f"{name}.safetensors"
    ckpt.save_weights(wpath, model, half=True, metadata={"name": name})
    ckpt.save_json(dest / f"{name}.json", out_cfg)
    log.info("exported %s → %s", run, wpath)
    # the shipped files must load as they are
    shipped, shipped_cfg = load_model(str(wpath))
    if shipped_cfg.get("task") != "instances":  # the CPU backend's graph, from the fp16 file
        from glandseg.models.config import ModelConfig
        from glandseg.models.onnx_export import export_onnx

        export_onnx(shipped, ModelConfig.from_dict(shipped_cfg, str(wpath)),
                    wpath.with_suffix(".onnx"), wpath)
    return wpath


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_ledger(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ledger of test evaluations (``[]`` if the file does not exist yet);
    a file with other columns than :data:`LEDGER_FIELDS` is a :class:`GlandsegError`."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GlandsegError(f"{path}: cannot read the ledger ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != LEDGER_FIELDS:
        raise GlandsegError(f"{path}: not a ledger of test evaluations (columns "
                            f"{reader.fieldnames}, expected {list(LEDGER_FIELDS)}); pass "
                            "--ledger FILE")
    return list(reader)


def append_ledger(path: str | Path, row: dict[str, str]) -> None:
    """Append ``row`` (keys :data:`LEDGER_FIELDS`) to the ledger at ``path`` atomically (the
    whole file rewritten through a temporary file); creates it with its header if absent.
    The folder must exist (a one-line :class:`GlandsegError` otherwise)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise GlandsegError(f"{path}: folder {path.parent} does not exist; pass --ledger FILE "
                            "(the CSV that records every Test A/B evaluation)")
    missing = [k for k in LEDGER_FIELDS if not str(row.get(k, "")).strip()]
    if missing:
        raise GlandsegError(f"ledger row lacks {missing}")
    rows = read_ledger(path) + [{k: str(row[k]) for k in LEDGER_FIELDS}]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(LEDGER_FIELDS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def ledger_markdown(rows: list[dict[str, str]]) -> str:
    """The ledger as the README's Markdown table ("Every test-set evaluation"): one line per
    row, weights as the first 12 hex digits of their SHA-256, ``|`` escaped."""

    def cell(v: str, code: bool = False) -> str:
        v = v.replace("|", "\\|")
        return f"`{v}`" if code and v.startswith(("python", "glandseg", "benchmarks/",
                                                   "results/")) else v

    out = ["| when (UTC) | what | weights SHA-256 | command | why |", "|---|---|---|---|---|"]
    for r in rows:
        sha = " / ".join(h[:12] if len(h) == 64 else h for h in r["weights_sha256"].split(" / "))
        out.append(f"| {cell(r['date'])} | {cell(r['model'])} | {cell(sha)} | "
                   f"{cell(r['command'], code=True)} | {cell(r['why'])} |")
    return "\n".join(out) + "\n"


def evaluate_test(name: str, data: str | Path, why: str, dest: str | Path | None = None,
                  ledger: str | Path = DEFAULT_LEDGER, device: str = "cpu",
                  command: str = "", again: bool = False) -> Path:
    """Evaluate the bundled model ``name`` (``dest/NAME.safetensors`` + ``.json``) on the
    Test A/B images of the GlaS folder ``data``: writes ``dest/NAME.eval/``, fills the
    card's figures and appends one row to ``ledger`` (:data:`LEDGER_FIELDS`). ``why``
    (required): the reason, in words; ``command``: the command line to record (default:
    this call, spelled as the CLI). A weights file already in the ledger is refused unless
    ``again``. Returns the evaluation folder."""
    if not isinstance(why, str) or not why.strip():
        raise GlandsegError("--why is required: say why Test A/B are evaluated (e.g. 'reporting "
                            "the bundle, chosen on validation'); it goes into the ledger")
    dest = Path(dest) if dest else Path(str(resources.files("glandseg.weights")))
    wpath, cpath = dest / f"{name}.safetensors", dest / f"{name}.json"
    for f in (wpath, cpath):
        if not f.is_file():
            raise GlandsegError(f"{f}: not found; export the model first "
                                "(python -m glandseg.train.export RUN NAME --selection TEXT)")
    digest = sha256_file(wpath)
    ledger = Path(ledger)
    earlier = [r for r in read_ledger(ledger) if r["weights_sha256"] == digest]
    if earlier and not again:
        raise GlandsegError(f"{wpath}: these weights were already evaluated on Test A/B "
                            f"({len(earlier)} time(s), first {earlier[0]['date']}, {ledger}); "
                            "pass --again to evaluate them once more (also recorded)")
    if not ledger.parent.is_dir():  # checked before the (long) evaluation
        raise GlandsegError(f"{ledger}: folder {ledger.parent} does not exist; pass --ledger "
                            "FILE (the CSV that records every Test A/B evaluation)")
    cfg = ckpt.load_json(cpath)
    card = cfg.setdefault("model_card", {})
    deblur = (card.get("inference") or {}).get("deblur", "auto")
    eval_dir = dest / f"{name}.eval"
    _evaluate_export(wpath, name, data, eval_dir, device, deblur)
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = command or shlex.join(["python", "-m", "glandseg.train.export", "evaluate", name,
                                     "--data", str(data), "--why", why])
    card.update(_figures(eval_dir))
    card["test_evaluation"] = {"date": date, "weights_sha256": digest, "why": why.strip(),
                               "ledger": ledger.name}
    ckpt.save_json(cpath, cfg)
    append_ledger(ledger, {"date": date, "model": name, "weights_sha256": digest,
                           "command": command, "why": why.strip()})
    log.info("evaluated %s on Test A/B → %s; recorded in %s", name, eval_dir, ledger)
    return eval_dir


def _evaluate_export(wpath: Path, name: str, data: str | Path, eval_dir: Path,
                     device: str, deblur: str = "auto") -> None:
    """Evaluate the exported files on Test A/B; keep the small outputs in ``eval_dir``."""
    from glandseg.engine.evaluate import evaluate_model
    from glandseg.infer.predictor import Predictor

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


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m glandseg.train.export", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="training run folder")
    p.add_argument("name", help="bundled model name, e.g. glas-unet")
    p.add_argument("--selection", required=True, metavar="TEXT",
                   help="required: how the checkpoint and settings were chosen (into the card)")
    p.add_argument("--note", default="", metavar="TEXT", help="anything else the card should say")
    p.add_argument("--training-data", default="", metavar="TEXT",
                   help="what the training images were, if not the run's data folder as is "
                        "(e.g. 'JPEG q95 copies of the GlaS training images')")
    p.add_argument("--eval-dir", default=None,
                   help="an existing evaluation of the exported files to read figures from")
    p.add_argument("--dest", default=None, help="default: the package's weights folder")
    p.add_argument("--trained-on", default="", help="the training machine, in words")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which epoch's weights to ship (default: best)")
    p.add_argument("--postprocess", default=None, metavar="JSON",
                   help='post-processing parameters replacing the run\'s, e.g. '
                        '\'{"interior_threshold": 0.5}\'')
    p.add_argument("--deblur", choices=("auto", "off"), default="auto",
                   help="inference --deblur recorded in the card and used by 'evaluate' "
                        "(default: auto, as glandseg evaluate)")
    return p


def _evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m glandseg.train.export evaluate",
        description="Evaluate a bundled model's exported files on Test A/B, once, and record "
                    "it in the ledger of test evaluations.")
    p.add_argument("name", help="bundled model name (DEST/NAME.safetensors + NAME.json)")
    p.add_argument("--data", required=True, help="GlaS folder with Test A/B")
    p.add_argument("--why", required=True, metavar="TEXT",
                   help="required: why the test set is evaluated (into the ledger)")
    p.add_argument("--dest", default=None, help="default: the package's weights folder")
    p.add_argument("--ledger", default=str(DEFAULT_LEDGER),
                   help=f"CSV ledger of test evaluations (default: {DEFAULT_LEDGER})")
    p.add_argument("--again", action="store_true",
                   help="evaluate weights that the ledger shows were evaluated already")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["evaluate"]:
            a = _evaluate_parser().parse_args(argv[1:])
            print(evaluate_test(a.name, a.data, a.why, a.dest, a.ledger, a.device,
                                command=shlex.join(["python", "-m", "glandseg.train.export",
                                                    *argv]),
                                again=a.again))
            return
        a = _export_parser().parse_args(argv)
        try:
            post = json.loads(a.postprocess) if a.postprocess else None
        except json.JSONDecodeError as e:
            raise GlandsegError(f"--postprocess: not JSON ({e}): give e.g. "
                                '\'{"interior_threshold": 0.5}\'') from None
        print(export_model(a.run, a.name, a.dest, a.trained_on, a.eval_dir, a.checkpoint, post,
                           a.deblur, a.note, selection=a.selection,
                           training_data=a.training_data))
    except GlandsegError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
