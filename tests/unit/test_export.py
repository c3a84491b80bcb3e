"""Exporting a run as a bundled model (fp16 safetensors + JSON model card)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glandseg.models import registry
from glandseg.train import checkpoint as ckpt
from glandseg.train.export import export_model


def _metrics(f1a: float) -> dict:
    part = {"n_images": 1, "pooled": {"f1": f1a, "object_dice": 0.5, "object_hausdorff": 9.0,
                                      "tp": 1, "fp": 0, "fn": 1},
            "per_image": {"f1": f1a, "object_dice": 0.5, "object_hausdorff": 9.0}}
    return {"testA": part, "testB": part}


def test_export_writes_half_weights_and_card(tmp_path: Path) -> None:
    run, ev, dest = tmp_path / "run", tmp_path / "eval", tmp_path / "weights"
    cfg = registry.default_config("unet")
    cfg["model_args"]["width"] = 4
    cfg["train"] = {"model": "unet", "stages": [{"optimizer": "adam"}], "crop": 48, "seed": 0,
                    "val_images": ["train_1"], "pretrained": False}
    model = registry.build_model(cfg, pretrained=False)
    run.mkdir()
    ckpt.save_json(run / "config.json", cfg)
    ckpt.save_weights(run / "best.safetensors", model)
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps(_metrics(0.75)))
    (ev / "metrics_split_gt.json").write_text(json.dumps(_metrics(0.8)))
    path = export_model(run, "tiny", dest=dest, eval_dir=ev, trained_on="test machine",
                        selection="best validation epoch of the run")
    assert path == dest / "tiny.safetensors"
    # the CPU backend's ONNX graph ships beside it, made from the fp16 file
    from glandseg.infer.backend import OnnxBackend
    from glandseg.models.fingerprint import file_fingerprint, sha256_file

    graph = OnnxBackend(dest / "tiny.onnx")
    assert graph.meta["weights_sha256"] == sha256_file(path)
    assert graph.fingerprint == file_fingerprint(path)
    tensors = load_file(str(path))
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    card = ckpt.load_json(dest / "tiny.json")["model_card"]
    assert card["official_metrics"]["testA"]["f1"] == 0.75
    assert card["official_metrics_split_gt"]["testB"]["f1"] == 0.8
    # the command is generated from the run's recorded arguments, not typed by hand
    assert card["command"].startswith("glandseg train --model unet")
    assert "--crop 48" in card["command"] and "--model-args" not in card["command"]
    assert card["training"]["machine"] == "test machine"
    assert card["provenance"]["torch"] == torch.__version__
    loaded, cfg2 = ckpt.load_model(str(path))  # fp16 file → the model's fp32 dtypes
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == ref[k].dtype
        assert torch.allclose(v, ref[k], atol=1e-2)
    assert cfg2["model_args"]["width"] == 4


def test_train_command_round_trips_through_the_cli_parser() -> None:
    """The generated command parses with the real ``glandseg train`` parser into the same
    settings (a flag renamed in the CLI breaks this test)."""
    import argparse
    import shlex

    from glandseg.cli import train_cmd
    from glandseg.train.export import train_command

    train = {"model": "unet-lite0", "epochs": 200, "batch_size": 8, "lr": 0.001,
             "optimizer": "adamw", "weight_decay": 0.0001, "schedule": "cosine", "crop": 512,
             "scale": 1.0, "tile": 1024, "repeats": 20, "workers": 4, "val_fraction": 0.2,
             "val_every": 1, "max_minutes": 6.5, "seed": 0, "device": "cuda",
             "model_args": {"encoder": "lite2"}, "pretrained": True, "init": "glas-unet",
             "robust": True, "robust_p": 0.8, "consistency": 2.0}
    cmd = shlex.split(train_command(train))
    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(cmd[1:])
    for key in ("model", "epochs", "batch_size", "lr", "optimizer", "crop", "scale", "tile",
                "repeats", "max_minutes", "device", "init", "robust", "robust_p",
                "consistency"):
        assert getattr(args, key) == train[key], key
    assert json.loads(args.model_args) == {"encoder": "lite2"}


def test_evaluate_export_keeps_only_the_small_outputs(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation of an export keeps EVAL_KEEP and drops the rest, folders included
    (``glandseg evaluate`` also writes errors/, predictions/, report.html, ...)."""
    import glandseg.engine.evaluate as ev_mod
    from glandseg.infer.predictor import Predictor
    from glandseg.train import export

    def fake_evaluate(pred, data, out, name):
        out = Path(out)
        (out / "errors").mkdir(parents=True)
        (out / "errors" / "testA_1.png").write_bytes(b"x")
        (out / "predictions").mkdir()
        for f in (*export.EVAL_KEEP, "report.html", "grades.csv"):
            (out / f).write_text("x")

    monkeypatch.setattr(ev_mod, "evaluate_model", fake_evaluate)
    monkeypatch.setattr(Predictor, "from_name", classmethod(lambda cls, *a, **k: None))
    eval_dir = tmp_path / "m.eval"
    eval_dir.mkdir()
    (eval_dir / "stale.txt").write_text("old")
    export._evaluate_export(tmp_path / "m.safetensors", "m", tmp_path, eval_dir, "cpu")
    assert sorted(p.name for p in eval_dir.iterdir()) == sorted(export.EVAL_KEEP)
    assert not (tmp_path / "m.eval.tmp").exists()


def test_export_last_checkpoint_with_chosen_postprocessing(tmp_path: Path) -> None:
    """``checkpoint="last"`` ships last.safetensors, ``postprocess`` replaces (checked)
    parameters, and both, with the note and the evaluation's deblur, are in the card."""
    from glandseg import GlandsegError

    run, dest = tmp_path / "run", tmp_path / "weights"
    cfg = registry.default_config("unet")
    cfg["model_args"]["width"] = 4
    cfg["train"] = {"model": "unet", "stages": [{"optimizer": "adam"}], "crop": 48, "seed": 0,
                    "val_images": ["train_1"], "pretrained": False}
    run.mkdir()
    ckpt.save_json(run / "config.json", cfg)
    best, last = (registry.build_model(cfg, pretrained=False) for _ in range(2))
    with torch.no_grad():
        for p in last.parameters():
            p.add_(0.5)
    ckpt.save_weights(run / "best.safetensors", best)
    ckpt.save_weights(run / "last.safetensors", last)
    post = {"foreground_threshold": 0.4, "split_h": 2.0}  # a binary U-Net's
    path = export_model(run, "tiny", dest=dest, checkpoint="last", postprocess=post,
                        note="a note", deblur="off", selection="chosen on validation")
    shipped, out = ckpt.load_model(str(path))
    for k, v in shipped.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, last.state_dict()[k], atol=1e-2), k
    assert out["postprocess"]["foreground_threshold"] == 0.4
    assert out["postprocess"]["split_h"] == 2.0 and out["postprocess"]["min_area"] == 100
    card = out["model_card"]
    assert card["checkpoint"] == "last" and card["postprocess_replaced"] == post
    assert card["selection"] == "chosen on validation" and card["inference"] == {"deblur": "off"}
    assert card["note"] == "a note"
    sel = {"selection": "x"}
    with pytest.raises(GlandsegError, match="interior_threshold"):
        export_model(run, "tiny", dest=dest, postprocess={"interior_threshold": 0.5}, **sel)
    with pytest.raises(GlandsegError, match="JSON object"):
        export_model(run, "tiny", dest=dest, postprocess=[0.5], **sel)  # type: ignore[arg-type]
    with pytest.raises(GlandsegError, match="deblur"):
        export_model(run, "tiny", dest=dest, deblur="on", **sel)
    (run / "last.safetensors").unlink()
    with pytest.raises(GlandsegError, match="last.safetensors"):
        export_model(run, "tiny", dest=dest, checkpoint="last", **sel)


def _tiny_run(tmp_path: Path, best_epoch: int = 2, epochs: int = 4) -> Path:
    """A run folder with best and last weights and a validation record."""
    run = tmp_path / "run"
    cfg = registry.default_config("unet")
    cfg["model_args"]["width"] = 4
    cfg["train"] = {"model": "unet", "stages": [{"optimizer": "adam"}], "crop": 48, "seed": 0,
                    "val_images": ["train_1"], "train_images": ["train_3", "train_4"],
                    "pretrained": False, "data": "/data/glas-jpeg"}
    cfg["validation"] = {"best": {"epoch": best_epoch, "val_f1": 0.8, "val_object_dice": 0.7},
                         "tuned_object_dice": 0.71}
    run.mkdir()
    ckpt.save_json(run / "config.json", cfg)
    model = registry.build_model(cfg, pretrained=False)
    ckpt.save_weights(run / "best.safetensors", model)
    ckpt.save_weights(run / "last.safetensors", model)
    ckpt.save_json(run / "last_state.json", {"history": [
        {"epoch": e, "seconds": 30.0} for e in range(1, epochs + 1)]})  # an older run's record
    return run


def test_card_text_comes_from_recorded_facts(tmp_path: Path) -> None:
    """No stock claim ("every choice made on validation, never on Test A/B"): the card says
    what was given (--selection required, --note, --training-data) and which checkpoint the
    validation figures belong to."""
    from glandseg import GlandsegError

    run, dest = _tiny_run(tmp_path), tmp_path / "w"
    with pytest.raises(GlandsegError, match="--selection is required"):
        export_model(run, "tiny", dest=dest, selection="  ")
    assert not (dest / "tiny.json").exists()
    export_model(run, "tiny", dest=dest, selection="best validation epoch")
    card = ckpt.load_json(dest / "tiny.json")["model_card"]
    text = json.dumps(card)
    assert "never on Test A/B" not in text and "every choice" not in text
    assert card["selection"] == "best validation epoch" and "note" not in card
    assert card["data"].endswith("trained on 2 images, validated on 1 images of held-out "
                                 "patients")
    assert "/data/glas-jpeg" in card["training_data"]  # the run's recorded data folder
    assert "none yet" in card["test_evaluation"] and "official_metrics" not in card
    fig = card["training"]["validation_figures"]
    assert "best epoch (2)" in fig and "not the shipped" not in fig

    export_model(run, "tiny", dest=dest, checkpoint="last", selection="last epoch",
                 postprocess={"foreground_threshold": 0.4},
                 training_data="JPEG q95 copies of the training images")
    card = ckpt.load_json(dest / "tiny.json")["model_card"]
    assert card["training_data"] == "JPEG q95 copies of the training images"
    assert card["training"]["shipped_epoch"] == 4
    fig = card["training"]["validation_figures"]
    assert "the shipped checkpoint is the last epoch (4)" in fig
    assert "post-processing replaces" in fig and "not the shipped model's" in fig
    assert card["training"]["validation_at_best_epoch"]["epoch"] == 2


def test_export_cli_requires_selection(tmp_path: Path, capsys) -> None:
    from glandseg.train.export import main

    run = _tiny_run(tmp_path)
    with pytest.raises(SystemExit):
        main([str(run), "tiny", "--dest", str(tmp_path / "w")])
    assert "--selection" in capsys.readouterr().err
    main([str(run), "tiny", "--dest", str(tmp_path / "w"), "--selection", "best epoch",
          "--note", "n"])
    card = ckpt.load_json(tmp_path / "w" / "tiny.json")["model_card"]
    assert card["selection"] == "best epoch" and card["note"] == "n"


def test_evaluate_test_appends_to_the_ledger(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The test evaluation is its own step: it fills the card's figures and appends one
    ledger row (date, model, weights SHA-256, command, why); the same weights again need
    --again; a missing ledger folder is refused before evaluating."""
    import hashlib

    from glandseg import GlandsegError
    from glandseg.train import export

    calls = []

    def fake_evaluate(wpath, name, data, eval_dir, device, deblur="auto"):
        calls.append((name, deblur))
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / "metrics.json").write_text(json.dumps(_metrics(0.6)))

    monkeypatch.setattr(export, "_evaluate_export", fake_evaluate)
    run, dest = _tiny_run(tmp_path), tmp_path / "w"
    export_model(run, "tiny", dest=dest, selection="best epoch", deblur="off")
    ledger = tmp_path / "results" / "test_ledger.csv"
    with pytest.raises(GlandsegError, match="does not exist"):
        export.evaluate_test("tiny", tmp_path, "reporting", dest=dest, ledger=ledger)
    assert calls == []
    ledger.parent.mkdir()
    ledger.write_text("date,model,weights_sha256,command,why\n"
                      "2026-11-26,old,abc,python -m x,\"earlier, with a comma\"\n")
    with pytest.raises(GlandsegError, match="--why is required"):
        export.evaluate_test("tiny", tmp_path, " ", dest=dest, ledger=ledger)
    export.main(["evaluate", "tiny", "--data", str(tmp_path), "--dest", str(dest),
                 "--ledger", str(ledger), "--why", "reporting the bundle"])
    assert calls == [("tiny", "off")]  # the card's deblur setting
    rows = export.read_ledger(ledger)
    assert [r["model"] for r in rows] == ["old", "tiny"]
    assert rows[0]["why"] == "earlier, with a comma"  # earlier rows kept as they were
    digest = hashlib.sha256((dest / "tiny.safetensors").read_bytes()).hexdigest()
    assert rows[1]["weights_sha256"] == digest and rows[1]["why"] == "reporting the bundle"
    assert rows[1]["command"].startswith("python -m glandseg.train.export evaluate tiny --data")
    assert rows[1]["date"].endswith("UTC")
    card = ckpt.load_json(dest / "tiny.json")["model_card"]
    assert card["official_metrics"]["testA"]["f1"] == 0.6
    assert card["test_evaluation"]["weights_sha256"] == digest
    # the same weights again: refused without --again, recorded with it
    with pytest.raises(SystemExit, match="already evaluated"):
        export.main(["evaluate", "tiny", "--data", str(tmp_path), "--dest", str(dest),
                     "--ledger", str(ledger), "--why", "again"])
    assert len(calls) == 1
    export.evaluate_test("tiny", tmp_path, "a second look", dest=dest, ledger=ledger,
                         again=True)
    assert [r["why"] for r in export.read_ledger(ledger)][-1] == "a second look"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(GlandsegError, match="not a ledger"):
        export.read_ledger(bad)
