"""The per-epoch checkpoint commit (glandseg.train.runstate): layout, a simulated kill at
every point of a commit, and one-line errors for every kind of damaged checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glandseg import GlandsegError
from glandseg.models.unet import UNet
from glandseg.train import runstate

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """A simulated SIGKILL: a BaseException, so no ``except Exception`` cleanup runs."""


def _net() -> torch.nn.Module:
    """A tiny conv net with float weights and an int buffer (BatchNorm's batch count)."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _net()


def _opt(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))


def _step(model, opt, sched, seed: int) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    loss = model(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _snap(model, opt) -> dict[str, torch.Tensor]:
    """Weights and optimizer moments, as one flat dict of copies."""
    out = {f"w.{k}": v.clone() for k, v in model.state_dict().items()}
    for pid, st in opt.state_dict()["state"].items():
        out.update({f"o.{pid}.{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Run:
    """A run folder with a model trained one step per epoch, committed per epoch."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.model = _model()
        self.opt, self.sched = _opt(self.model)
        self.history: list[dict] = []
        self.commit: runstate.Commit | None = None
        self.snaps: dict[int, dict] = {}

    def epoch(self, dice: float, best: float) -> runstate.Commit:
        e = len(self.history) + 1
        _step(self.model, self.opt, self.sched, e)
        self.snaps[e] = _snap(self.model, self.opt)
        self.history.append({"epoch": e, "val_object_dice": dice})
        self.commit = runstate.commit_epoch(
            self.dir, self.model, self.opt, self.sched, None, epoch=e, stage=0,
            history=self.history, elapsed=float(e), best=max(best, dice), improved=dice > best,
            previous=self.commit)
        return self.commit


def _restored(commit: runstate.Commit, role: str = "last") -> dict:
    """Weights and optimizer state as a fresh process would restore them from ``commit``."""
    model = _net()
    opt, sched = _opt(model)
    runstate.load_weights(commit, role, model)
    runstate.restore_state(commit, opt, sched, None)
    return _snap(model, opt)


def _leftovers(run: Path, commit: runstate.Commit) -> list[str]:
    """Temp files anywhere and checkpoint files the manifest does not name."""
    named = {commit.files[r]["name"] for r in commit.files}
    extra = [p.relative_to(run).as_posix() for p in run.rglob("*")
             if p.name.startswith(".")]
    extra += [f"checkpoint/{p.name}" for p in (run / "checkpoint").iterdir()
              if f"checkpoint/{p.name}" not in named]
    return sorted(set(extra))


def test_commit_layout(tmp_path: Path) -> None:
    r = Run(tmp_path / "run")
    r.epoch(0.5, -1.0)
    c = r.epoch(0.4, 0.5)  # not better: best stays epoch 1's file
    run = r.dir
    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors", "checkpoint", "checkpoint.json", "last.safetensors"]
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "best-e0001.safetensors", "last-e0002.safetensors", "state-e0002.safetensors"]
    m = json.loads((run / "checkpoint.json").read_text())
    assert m["epoch"] == 2 and m["best"] == 0.5 and m["best_epoch"] == 1
    assert m["files"]["best"]["name"] == "checkpoint/best-e0001.safetensors"
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    # the public files are the committed ones, with their metadata
    assert (run / "last.safetensors").read_bytes() == c.path("last").read_bytes()
    assert (run / "best.safetensors").read_bytes() == c.path("best").read_bytes()
    assert _same(_restored(c), r.snaps[2])
    assert _same({k: v for k, v in _restored(c, "best").items() if k.startswith("w.")},
                 {k: v for k, v in r.snaps[1].items() if k.startswith("w.")})
    from safetensors import safe_open

    with safe_open(str(run / "best.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["epoch"]) == 1
        assert json.loads(f.metadata()["val"])["val_object_dice"] == 0.5
    r.epoch(0.9, 0.5)  # better: the old best file goes
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "best-e0003.safetensors", "last-e0003.safetensors", "state-e0003.safetensors"]


def _points(tmp: Path, improved: bool) -> list[str]:
    """Labels of the fault points of an epoch-2 commit (after a complete epoch 1)."""
    r = Run(tmp)
    r.epoch(0.5, -1.0)
    labels: list[str] = []
    runstate.FAULT = labels.append
    try:
        r.epoch(0.8 if improved else 0.3, 0.5)
    finally:
        runstate.FAULT = None
    return labels


@pytest.mark.parametrize("improved", [True, False], ids=["new-best", "no-new-best"])
def test_kill_at_every_point_of_a_commit(tmp_path: Path, improved: bool) -> None:
    points = _points(tmp_path / "count", improved)
    # files, manifest, public names and clean-up each have their points
    assert {"manifest: temporary file written", "manifest: renamed"} <= set(points)
    assert len(points) >= (12 if improved else 9)
    outcomes = set()
    for k in range(1, len(points) + 1):
        r = Run(tmp_path / f"k{k}")
        r.epoch(0.5, -1.0)
        seen: list[str] = []

        def hook(label: str, k: int = k, seen: list[str] = seen) -> None:
            seen.append(label)
            if len(seen) == k:
                raise Killed(label)

        runstate.FAULT = hook
        try:
            with pytest.raises(Killed):
                r.epoch(0.8 if improved else 0.3, 0.5)
        finally:
            runstate.FAULT = None
        committed = "manifest: renamed" in seen
        c = runstate.resume(r.dir)  # what `--resume` reads: the last complete epoch
        want = 2 if committed else 1
        outcomes.add(want)
        assert c.epoch == want and len(c.history) == want, (k, seen[-1])
        assert _same(_restored(c), r.snaps[want]), (k, seen[-1])  # weights + optimizer
        best_epoch = 2 if committed and improved else 1
        assert c.best_epoch == best_epoch and c.best == (0.8 if best_epoch == 2 else 0.5)
        best_w = {k2: v for k2, v in _restored(c, "best").items() if k2.startswith("w.")}
        assert _same(best_w, {k2: v for k2, v in r.snaps[best_epoch].items()
                              if k2.startswith("w.")}), (k, seen[-1])
        for role in ("last", "best"):  # the public names show the committed files
            assert (r.dir / f"{role}.safetensors").read_bytes() == c.path(role).read_bytes()
        assert _leftovers(r.dir, c) == [], (k, seen[-1])
        # and the run goes on from there
        r.history = r.history[:want]
        r.commit = c
        r.epoch(0.95, c.best)
        assert runstate.read_commit(r.dir).epoch == want + 1
    assert outcomes == {1, 2}


def test_killed_write_leaves_temp_file_that_resume_removes(tmp_path: Path) -> None:
    r = Run(tmp_path / "run")
    r.epoch(0.5, -1.0)

    def die(label: str) -> None:
        if label == "last weights: temporary file written":
            raise Killed

    runstate.FAULT = die
    try:
        with pytest.raises(Killed):
            r.epoch(0.6, 0.5)
    finally:
        runstate.FAULT = None
    temps = [p.name for p in (r.dir / "checkpoint").iterdir() if p.name.startswith(".")]
    assert len(temps) == 1 and temps[0].startswith(".last-e0002.")
    # stale temp files of older versions' writes in the run folder go too
    (r.dir / ".last.abcd1234.safetensors").write_bytes(b"x" * 100)
    c = runstate.resume(r.dir)
    assert c.epoch == 1 and _leftovers(r.dir, c) == []
    assert not (r.dir / ".last.abcd1234.safetensors").exists()


# --- damaged checkpoints: one-line errors naming the file and the fix ---------------------

@pytest.fixture
def run(tmp_path: Path) -> Path:
    r = Run(tmp_path / "run")
    r.epoch(0.5, -1.0)
    r.epoch(0.6, 0.5)
    return r.dir


def _error(run: Path) -> str:
    with pytest.raises(GlandsegError) as ei:
        c = runstate.resume(run)
        runstate.load_weights(c, "last", _net())
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert "delete the run folder" in msg or "--resume" in msg, msg
    return msg


def test_truncated_state_file(run: Path) -> None:
    p = run / "checkpoint" / "state-e0002.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert _error(run).startswith(f"{p}: damaged")


def test_flipped_byte_same_size(run: Path) -> None:
    p = run / "checkpoint" / "last-e0002.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    assert _error(run).startswith(f"{p}: damaged")


def test_missing_named_file(run: Path) -> None:
    p = run / "checkpoint" / "best-e0002.safetensors"
    p.unlink()
    assert _error(run).startswith(f"{p}: missing")


@pytest.mark.parametrize("text,match", [
    ("{\"epoch\": 2, ", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ("{\"format\": 1, \"epoch\": 2}", "not a glandseg checkpoint manifest"),
    ("{\"format\": 7}", "unknown format"),
    ("", "invalid JSON"),
])
def test_bad_manifest(run: Path, text: str, match: str) -> None:
    (run / "checkpoint.json").write_text(text)
    msg = _error(run)
    assert msg.startswith(f"{run / 'checkpoint.json'}: ") and match in msg


def test_manifest_pointing_outside_the_run(run: Path) -> None:
    m = json.loads((run / "checkpoint.json").read_text())
    m["files"]["last"]["name"] = "../elsewhere.safetensors"
    (run / "checkpoint.json").write_text(json.dumps(m))
    assert "outside the run folder" in _error(run)


def test_no_manifest_and_old_format(run: Path) -> None:
    (run / "checkpoint.json").unlink()
    assert "nothing to resume" in _error(run)
    (run / "last_state.json").write_text("{}")
    assert "older glandseg" in _error(run)


def test_state_that_does_not_fit_the_optimizer(run: Path) -> None:
    c = runstate.read_commit(run)
    small = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(small.parameters())
    with pytest.raises(GlandsegError, match="training state does not fit") as ei:
        runstate.restore_state(c, opt, None, None)
    assert str(ei.value).startswith(str(c.path("state")))


def test_weights_that_do_not_fit(run: Path) -> None:
    c = runstate.read_commit(run)
    with pytest.raises(GlandsegError, match="do not fit"):
        runstate.load_weights(c, "last", UNet(width=4, out_channels=1))


def test_refuse_existing(run: Path, tmp_path: Path) -> None:
    with pytest.raises(GlandsegError, match="a run exists there"):
        runstate.refuse_existing(run)
    runstate.refuse_existing(tmp_path / "new")  # nothing there: fine
    assert load_file(str(run / "last.safetensors"))  # untouched
