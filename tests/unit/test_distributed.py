"""DistributedDataParallel training on the CPU (gloo, 2 processes): a step of 2 processes
with batch b/2 each equals a step of one process with batch b; rank 0 alone writes one set
of checkpoints and logs and validates once; ``torchrun -m glandseg train`` end to end with
``--resume``."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from glandseg import GlandsegError
from glandseg.models import registry
from glandseg.train import distributed
from glandseg.train.distributed import DistEnv, DistributedTrainer, from_env, per_rank_batch
from glandseg.train.loop import TrainConfig, Trainer, seed_everything
from tests.conftest import synth_pair, write_grade_csv

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 images of exactly 32 x 32 px (3 patients; one held out): with crop 32 and
    augmentation strength 0 a crop is the whole image, so the data are deterministic."""
    root = tmp_path_factory.mktemp("glas")
    names = [f"train_{i}" for i in range(1, 7)]
    for i, n in enumerate(names):
        img, lab = synth_pair(32, 32, 2, seed=i)
        Image.fromarray(img).save(root / f"{n}.png")
        Image.fromarray(lab).save(root / f"{n}_anno.png")
    write_grade_csv(root / "Grade.csv", names)
    return root


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    """4 training crops, batch 4: one SGD step per epoch."""
    args = dict(model="unet", data=str(data), out=str(out), model_args={"width": 4}, epochs=1,
                crop=32, scale=1.0, workers=0, batch_size=4, repeats=1, optimizer="sgd", lr=0.5,
                schedule="constant", tune_postprocess=False, device="cpu", pretrained=False,
                augment_strength=0.0)
    args.update(kw)
    return TrainConfig(**args)


def test_from_env() -> None:
    assert from_env({}) == DistEnv() and not from_env({}).enabled
    env = from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (env.rank, env.local_rank, env.world_size, env.main, env.enabled) == (3, 1, 4, False,
                                                                                 True)
    with pytest.raises(GlandsegError, match="launch with torchrun"):
        from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_global_batch_is_split_evenly() -> None:
    assert per_rank_batch(8, 2) == 4
    with pytest.raises(GlandsegError, match="--batch-size 6"):
        per_rank_batch(7, 3)


def _rank(rank: int, world: int, port: int, tc: TrainConfig, q) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import glandseg.report.figures as figures

    figures.training_curves = lambda *a, **k: None
    try:
        DistributedTrainer(tc, env=DistEnv(rank, rank, world)).fit()
        q.put((rank, "ok"))
    except BaseException as exc:  # pragma: no cover - reported to the test
        q.put((rank, repr(exc)))
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_step_equals_one_process_step(tmp_path: Path, data: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(tiny(data, tmp_path / "one")).fit()
    finally:
        torch.set_num_threads(n)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["glandseg.train.distributed", "glandseg.metrics.score"])
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, tiny(data, tmp_path / "two"), q))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    results = dict(q.get(timeout=5) for _ in procs)
    assert results == {0: "ok", 1: "ok"}, results

    one = load_file(tmp_path / "one" / "last.safetensors")
    two = load_file(tmp_path / "two" / "last.safetensors")
    cfg = json.loads((tmp_path / "one" / "config.json").read_text())
    seed_everything(0)
    init = registry.build_model(cfg, pretrained=False).state_dict()
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert moved > 1e-3  # the step changed the weights ...
    assert diff < 1e-6 * max(1.0, moved) * 10  # ... identically, to float tolerance

    run = tmp_path / "two"  # rank 0 alone wrote one set of checkpoints and logs
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "best-e0001.safetensors", "last-e0001.safetensors", "state-e0001.safetensors"]
    assert not [p for p in run.rglob(".*")]  # no temporary files
    with open(run / "metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]
    assert (run / "train.log").read_text().count("epoch 1:") == 1  # validated once
    assert json.loads((run / "config.json").read_text())["train"]["world_size"] == 2


def test_train_chooses_the_distributed_trainer(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    from glandseg.train import loop, run

    seen = []
    monkeypatch.setattr(distributed.DistributedTrainer, "fit", lambda self: seen.append("ddp"))
    monkeypatch.setattr(loop.Trainer, "fit", lambda self: seen.append("one"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run.train(TrainConfig(out=str(tmp_path / "a"), device="cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    run.train(TrainConfig(out=str(tmp_path / "b"), device="cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    run.train(TrainConfig(out=str(tmp_path / "c"), device="cpu"))
    assert seen == ["one", "one", "ddp"]


@pytest.mark.slow
def test_torchrun_train_and_resume(tmp_path: Path, data: Path) -> None:
    """``torchrun --nproc_per_node 2 -m glandseg train``: stopped by its time budget after
    epoch 1, ``--resume`` continues to epoch 3 and ends with the weights of an
    uninterrupted 2-process run."""
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"augment_strength": 0}))
    args = ["train", "--model", "unet", "--model-args", '{"width": 4}', "--data", str(data),
            "--epochs", "3", "--crop", "32", "--scale", "1.0", "--workers", "0",
            "--batch-size", "2", "--repeats", "1", "--no-tune", "--device", "cpu",
            "--pretrained", "none", "--optimizer", "sgd", "--lr", "0.1", "--schedule", "constant",
            "--params", str(params)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "glandseg"]

    def run(*extra: str) -> None:
        r = subprocess.run([*torchrun, *extra], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]

    run(*args, "--out", str(tmp_path / "full"))
    run(*args, "--out", str(tmp_path / "cut"), "--max-minutes", "0")
    with open(tmp_path / "cut" / "metrics.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
    run("train", "--resume", "--out", str(tmp_path / "cut"), "--max-minutes", "1000")
    full = load_file(tmp_path / "full" / "last.safetensors")
    cut = load_file(tmp_path / "cut" / "last.safetensors")
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoint").iterdir())[-1] == \
        "state-e0003.safetensors"
    moved = max(float((full[k] - cut[k]).abs().max()) for k in full)
    assert moved < 1e-6  # the same weights as without the interruption
