"""glandseg search: the space, the study (real Trainer runs on a tiny synthetic GlaS folder),
failures, pruning, kill -9 and rerun, two workers on one study, PostgreSQL storage, and
best.json accepted by ``glandseg train --params``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glandseg import GlandsegError
from glandseg.search.space import SearchSpace, default_space, load_space
from glandseg.search.study import SearchConfig, open_study, run_search, search_space
from glandseg.train.loop import Trainer
from glandseg.train.params import load_params
from tests.conftest import make_glas_folder

optuna = pytest.importorskip("optuna", reason="glandseg search needs optuna (dev extra)")
from optuna.trial import TrialState  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_SPACE = {"batch_size": {"choices": [2, 4]}, "crop": {"choices": [32]}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 training images of 3 patients (one held out for validation), ~32 x 32 px."""
    return make_glas_folder(tmp_path_factory.mktemp("glas"),
                            names=[f"train_{i}" for i in range(1, 7)], ext=".png", size=(32, 32),
                            n_glands=2)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch):
    """In-process trials: no curve drawing, one torch thread (tiny tensors)."""
    monkeypatch.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(data: Path, out: Path, **kw) -> SearchConfig:
    space = out.parent / f"{out.name}-space.json"
    space.write_text(json.dumps(TINY_SPACE))
    args = dict(model="unet", data=str(data), out=str(out), sampler="random", pruner="none",
                trials=3, epochs=2, scale=1.0, repeats=1, loader_workers=0, device="cpu",
                pretrained=False, model_args={"width": 4}, space=str(space))
    args.update(kw)
    return SearchConfig(**args)


def cli_args(cfg: SearchConfig) -> list[str]:
    return ["search", "--model", cfg.model, "--data", cfg.data, "--out", cfg.out,
            "--sampler", cfg.sampler, "--pruner", cfg.pruner, "--trials", str(cfg.trials),
            "--epochs", str(cfg.epochs), "--scale", str(cfg.scale), "--repeats",
            str(cfg.repeats), "--loader-workers", "0", "--device", "cpu", "--pretrained", "none",
            "--model-args", json.dumps(cfg.model_args), "--space", cfg.space]


def trials_of(cfg: SearchConfig):
    return open_study(cfg, load_space(cfg.model, cfg.space, cfg.pretrained)).get_trials()


# --- the space ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["unet", "unet-lite0", "maskrcnn", "maskrcnn-lite0"])
def test_default_space_per_model(model: str) -> None:
    space = load_space(model)
    names = {p.name for p in space.params}
    assert {"lr", "weight_decay", "batch_size", "crop", "augment_strength"} <= names
    assert any(n.startswith("loss_") for n in names)
    assert ("encoder" in names) == model.endswith("lite0")


def test_space_file_replaces_removes_and_fixes(tmp_path: Path) -> None:
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"lr": {"low": 0.01, "high": 0.1, "log": True}, "loss_dice": None,
                             "optimizer": "sgd", "epochs": {"low": 2, "high": 6}}))
    space = load_space("unet", f)
    by = {p.name: p for p in space.params}
    assert (by["lr"].low, by["lr"].high, by["lr"].log) == (0.01, 0.1, True)
    assert "loss_dice" not in by
    assert by["optimizer"].kind == "fixed" and by["optimizer"].fixed == "sgd"
    assert by["epochs"].kind == "int"
    assert space.to_json() == SearchSpace.from_dict("unet", space.to_json()).to_json()


@pytest.mark.parametrize("spec, words", [
    ({"momentum_x": 0.9}, "cannot be searched"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "low <= high"),
    ({"lr": {"low": 0, "high": 0.1, "log": True}}, "log range"),
    ({"lr": {"low": 1e-3, "high": 5.0}}, "lr must be"),
    ({"crop": {"choices": [100]}}, "multiple of 16"),
    ({"loss_mask": {"low": 0, "high": 1}}, "cannot be searched"),
    ({"batch_size": [2, 4]}, "choices"),
    ({"encoder": {"choices": ["lite0"]}}, "cannot be searched"),
])
def test_space_errors_name_the_file(tmp_path: Path, spec: dict, words: str) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(spec))
    with pytest.raises(GlandsegError, match=words) as err:
        load_space("unet", f)
    assert str(f) in str(err.value)


def test_narrowed_around_best() -> None:
    space = SearchSpace.from_dict("unet-lite0", {
        "lr": {"low": 1e-4, "high": 1e-2, "log": True}, "augment_strength": {"low": 0, "high": 2},
        "batch_size": {"choices": [2, 4, 8, 16]}, "encoder": {"choices": ["lite0", "lite2"]}})
    n = {p.name: p for p in space.narrowed({"lr": 1e-3, "augment_strength": 1.9,
                                            "batch_size": 4, "encoder": "lite2"}).params}
    # log range: a quarter of the decades (2 -> 0.5), centred on 1e-3
    assert n["lr"].low == pytest.approx(10 ** -3.25) and n["lr"].high == pytest.approx(10 ** -2.75)
    assert (n["augment_strength"].low, n["augment_strength"].high) == (1.65, 2.0)  # clipped
    assert n["batch_size"].choices == (2, 4, 8) and n["encoder"].choices == ("lite2",)


def test_capped_lowers_values_above_the_limit() -> None:
    space = SearchSpace.from_dict("unet", {
        "batch_size": {"choices": [4, 8, 16]}, "epochs": {"low": 2, "high": 30},
        "lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    by = {p.name: p for p in space.capped("batch_size", 6).params}
    assert by["batch_size"].choices == (4, 6)
    assert space.capped("batch_size", 2).lowest("batch_size") == 2
    assert {p.name: p for p in space.capped("batch_size", 2).params}["batch_size"].choices == (2,)
    assert space.capped("batch_size", 16) == space  # nothing above: unchanged
    by = {p.name: p for p in space.capped("epochs", 10).params}
    assert (by["epochs"].kind, by["epochs"].low, by["epochs"].high) == ("int", 2, 10)
    fixed = SearchSpace.from_dict("unet", {"batch_size": 8}).capped("batch_size", 3)
    assert fixed.params[0].fixed == 3 and fixed.lowest("lr") is None


def test_search_on_four_images_fits_the_batch_sizes(tmp_path: Path, fast,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """4 images of 2 patients: 2 train, 1 repeat, so 2 crops an epoch. The default batch
    sizes (4, 8, 16) would each fail every trial; lowered to 2, every trial completes."""
    import logging

    caplog.set_level(logging.WARNING, logger="glandseg")
    four = make_glas_folder(tmp_path / "four", names=[f"train_{i}" for i in range(1, 5)],
                            ext=".png", size=(32, 32), n_glands=2)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"batch_size": {"choices": [4, 8, 16]},
                                 "crop": {"choices": [32]}}))
    cfg = tiny(four, tmp_path / "study", trials=2, epochs=1, space=str(space))
    c = run_search(cfg)
    assert (c.complete, c.failed) == (2, 0)
    trials = open_study(cfg, search_space(cfg)).get_trials()  # the space fitted to the data
    assert [t.params["batch_size"] for t in trials] == [2, 2]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    said = [r.getMessage() for r in caplog.records if "lowered" in r.getMessage()]
    assert said == ["batch sizes of the search space lowered to at most 2, the training crops "
                    "of an epoch (2 images x 1 repeats)"]  # by the search, once; no trial had to
    assert json.loads((tmp_path / "study" / "best.json").read_text())["train"]["batch_size"] == 2


def test_train_params_mapping() -> None:
    space = load_space("maskrcnn-lite0")
    tp = space.train_params({"lr": 0.01, "loss_mask": 1.5, "encoder": "lite2", "crop": 256})
    assert tp == {"lr": 0.01, "loss_weights": {"mask": 1.5}, "crop": 256,
                  "model_args": {"encoder": "lite2", "backbone": "lite2"}}
    assert "optimizer" in default_space("maskrcnn") and "encoder" not in default_space("maskrcnn")


def test_missing_optuna_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from glandseg.search import require_optuna

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(GlandsegError, match=r"pip install 'glandseg\[search\]'"):
        require_optuna()


# --- studies (in-process) ------------------------------------------------------------------

def test_three_trial_search_writes_results(tmp_path: Path, data: Path, fast) -> None:
    cfg = tiny(data, tmp_path / "study")
    c = run_search(cfg)
    assert (c.complete, c.pruned, c.failed) == (3, 0, 0)
    trials = trials_of(cfg)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:  # a real training run each, its per-epoch values reported
        run = Path(t.user_attrs["run"])
        assert (run / "metrics.csv").read_text().count("\n") == 1 + cfg.epochs
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == max(t.intermediate_values.values())
        assert not list(run.glob("*.safetensors"))  # weights dropped, logs kept
    best = json.loads((tmp_path / "study" / "best.json").read_text())
    assert best["value"] == max(t.value for t in trials)
    params = load_params(tmp_path / "study" / "best.json")  # what train --params reads
    assert params["model"] == "unet" and params["model_args"] == {"width": 4}
    assert params["batch_size"] in (2, 4) and params["epochs"] == 2
    rows = (tmp_path / "study" / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("number,state,value")
    for name in ("history", "parallel"):
        assert (tmp_path / "study" / f"{name}.png").stat().st_size > 1000
    # the same command again: nothing to do (the study holds its 3 trials)
    assert run_search(cfg).complete == 3 and len(trials_of(cfg)) == 3
    # more trials asked: it continues to 4
    assert run_search(tiny(data, tmp_path / "study", trials=4)).complete == 4


def test_failing_trial_is_recorded_and_search_goes_on(tmp_path: Path, data: Path, fast,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = Trainer.train_epoch

    def oom_in_trial_1(self, epoch):
        if self.run.name == "trial-0001":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", oom_in_trial_1)
    cfg = tiny(data, tmp_path / "study")
    c = run_search(cfg)
    assert (c.complete, c.failed) == (3, 1)
    t1 = trials_of(cfg)[1]
    assert t1.state == TrialState.FAIL
    assert t1.user_attrs["fail_reason"].startswith("out of memory: CUDA out of memory")
    assert "out of memory" in (tmp_path / "study" / "trials.csv").read_text()


def test_too_many_failures_stop_with_one_line(tmp_path: Path, data: Path, fast,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def nan(self, epoch):
        raise GlandsegError("loss became nan at epoch 1; lower --lr")

    monkeypatch.setattr(Trainer, "train_epoch", nan)
    cfg = tiny(data, tmp_path / "study", max_failures=2)
    with pytest.raises(GlandsegError, match="2 trials failed"):
        run_search(cfg)
    assert [t.state for t in trials_of(cfg)] == [TrialState.FAIL] * 2
    assert "loss became nan" in (tmp_path / "study" / "trials.csv").read_text()


def test_bad_trials_are_pruned(tmp_path: Path, data: Path, fast,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripted validation: trials 0 and 1 score 0.8 each epoch, later ones 0.1: the median
    pruner stops those at epoch 2 (after the 1 warm-up epoch), and pruned trials count as
    finished."""

    def scripted(self):
        d = 0.8 if self.run.name in ("trial-0000", "trial-0001") else 0.1
        return {"val_loss": 1 - d, "val_f1": d, "val_object_dice": d, "val_object_hausdorff": 1}

    monkeypatch.setattr(Trainer, "validate", scripted)
    cfg = tiny(data, tmp_path / "study", pruner="median", trials=4, epochs=4)
    c = run_search(cfg)
    assert (c.complete, c.pruned) == (2, 2)
    pruned = [t for t in trials_of(cfg) if t.state == TrialState.PRUNED]
    assert [t.user_attrs["epochs"] for t in pruned] == [2, 2]


def test_two_stages_narrow_the_space(tmp_path: Path, data: Path, fast) -> None:
    cfg = tiny(data, tmp_path / "study", trials=4, stages=2)
    run_search(cfg)
    trials = trials_of(cfg)
    assert [t.user_attrs["stage"] for t in trials] == [1, 1, 2, 2]
    best1 = max(trials[:2], key=lambda t: t.value)
    for t in trials[2:]:
        lr = t.distributions["lr"]
        assert lr.low <= best1.params["lr"] <= lr.high
        assert lr.high / lr.low < (3e-3 / 1e-4) ** 0.26  # a quarter of the decades


def test_other_settings_refused(tmp_path: Path, data: Path, fast) -> None:
    run_search(tiny(data, tmp_path / "study", trials=1))
    with pytest.raises(GlandsegError, match="other settings.*epochs"):
        run_search(tiny(data, tmp_path / "study", trials=1, epochs=3))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_dead_worker_trial_failed_at_once(tmp_path: Path, data: Path, fast) -> None:
    """A running trial whose process is gone (pid of an exited child) is marked failed
    by the next worker on this machine, which then completes the study."""
    cfg = tiny(data, tmp_path / "study", trials=2)
    space = load_space(cfg.model, cfg.space, cfg.pretrained)
    Path(cfg.out).mkdir()
    study = open_study(cfg, space)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = study.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", dead.pid)
    t.set_user_attr("pid_started", 1.0)
    c = run_search(cfg)
    assert c.complete == 2
    first = trials_of(cfg)[0]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_kind"] == "worker died"


# --- processes ----------------------------------------------------------------------------

def _wait_for(cfg: SearchConfig, cond, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if Path(cfg.out, "study.db").exists():
            try:
                if cond(trials_of(cfg)):
                    return
            except Exception:  # the database is being created
                pass
        time.sleep(0.5)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_kill9_then_same_command_holds_exactly_n(tmp_path: Path, data: Path) -> None:
    cfg = tiny(data, tmp_path / "study", epochs=3)
    cmd = [sys.executable, "-m", "glandseg", *cli_args(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:  # kill -9 while trial 1 trains (trial 0 complete)
        _wait_for(cfg, lambda ts: len(ts) == 2 and ts[0].state == TrialState.COMPLETE
                  and ts[1].state == TrialState.RUNNING and "run" in ts[1].user_attrs, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    trials = trials_of(cfg)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3
    assert states[1] == TrialState.FAIL and trials[1].user_attrs["fail_kind"] == "worker died"
    assert len({t.number for t in trials}) == len(trials) == 4
    assert "3 complete" in r.stdout


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path: Path, data: Path) -> None:
    cfg = tiny(data, tmp_path / "study", trials=4, workers=2)
    c = run_search(cfg)
    trials = trials_of(cfg)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert c.finished == len(done) == 4
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both workers trained


# --- PostgreSQL ---------------------------------------------------------------------------

def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(cands[-1]) if cands else None


@pytest.fixture
def postgres(tmp_path: Path):
    """A PostgreSQL server in a temporary folder (as user postgres when run as root);
    yields its URL."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL test: initdb not found (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="PostgreSQL test: pip install 'psycopg[binary]'")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("PostgreSQL test: running as root without runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL test: running as root and no user 'postgres'")
        prefix = ["runuser", "-u", "postgres", "--"]
    base = Path("/tmp") / f"glandseg-pg-{os.getpid()}-{time.time_ns()}"
    base.mkdir()
    os.chmod(base, 0o777)
    pgdata, sock = base / "data", base
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*prefix, initdb, "-D", str(pgdata), "-U", "postgres", "-A", "trust",
                    "--no-sync"], check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", str(pgdata), "-o", opts, "-w", "-l",
                    str(base / "log"), "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(pgdata), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_postgresql_storage(tmp_path: Path, data: Path, fast, postgres: str) -> None:
    cfg = tiny(data, tmp_path / "study", trials=2, storage=postgres, study_name="pg-study")
    assert run_search(cfg).complete == 2
    assert not (tmp_path / "study" / "study.db").exists()
    # a second machine joining with the same URL and name sees the study and adds to it
    other = tiny(data, tmp_path / "elsewhere", trials=3, storage=postgres,
                 study_name="pg-study")
    assert run_search(other).complete == 3
    study = optuna.load_study(study_name="pg-study", storage=postgres)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3


# --- glandseg train --params ---------------------------------------------------------------

def test_train_params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from glandseg.cli import main

    seen = []
    monkeypatch.setattr("glandseg.train.run.train", lambda tc: seen.append(tc) or tmp_path)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"value": 0.8, "train": {
        "model": "unet", "lr": 0.002, "batch_size": 4, "crop": 128, "epochs": 7,
        "augment_strength": 0.5, "loss_weights": {"dice": 1.2}, "model_args": {"width": 8},
        "pretrained": False, "momentum": 0.8}}))
    assert main(["train", "--params", str(best), "--data", "D", "--out", str(tmp_path / "r"),
                 "--lr", "0.01", "--model-args", '{"batch_norm": true}']) == 0
    tc = seen[0]
    assert (tc.model, tc.lr, tc.batch_size, tc.crop, tc.epochs) == ("unet", 0.01, 4, 128, 7)
    assert (tc.augment_strength, tc.loss_weights, tc.momentum) == (0.5, {"dice": 1.2}, 0.8)
    assert tc.model_args == {"width": 8, "batch_norm": True} and tc.pretrained is False
    # errors: one line naming the file and the key
    for bad, words in (({"lr": 3}, "lr must be"), ({"loss_weights": {"mask": 1}}, "loss_weights.mask"),
                       ({"colour": 1}, "unknown training parameter 'colour'")):
        best.write_text(json.dumps({"train": {"model": "unet", **bad}}))
        assert main(["train", "--params", str(best), "--data", "D", "--out", "x"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and str(best) in err


def test_time_limit_caps_the_trials_budget(tmp_path: Path, data: Path) -> None:
    from glandseg.search.study import Objective

    cfg = tiny(data, tmp_path / "study")
    space = load_space(cfg.model, cfg.space, cfg.pretrained)
    tp = {"lr": 0.01, "loss_weights": {"dice": 0.2}, "model_args": {"batch_norm": True}}
    tc = Objective(cfg, space, deadline=time.time() + 30).train_config(tp, tmp_path / "r")
    assert 0.45 < tc.max_minutes <= 0.5 and tc.val_every == 1 and tc.lr == 0.01
    assert tc.model_args == {"width": 4, "batch_norm": True}
    assert tc.loss_weights == {"dice": 0.2} and tc.seed == cfg.seed
    capped = tiny(data, tmp_path / "study", minutes_per_trial=0.1)
    assert Objective(capped, space, deadline=time.time() + 30).train_config(
        tp, tmp_path / "r").max_minutes == 0.1
    assert Objective(cfg, space).train_config(tp, tmp_path / "r").max_minutes is None


def test_storage_retries_when_another_worker_created_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers opening a new SQLite study at once: the loser's schema insert fails with
    an IntegrityError (UNIQUE alembic_version); it opens the storage again instead of failing.
    Any other error is still one line."""
    import optuna

    from glandseg.search import study

    class IntegrityError(Exception):
        pass

    real = optuna.storages.RDBStorage
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("UNIQUE constraint failed: alembic_version.version_num")
        return real(*a, **k)

    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    cfg = SearchConfig(model="unet", data=str(tmp_path), out=str(tmp_path / "s"))
    (tmp_path / "s").mkdir()
    assert study._storage(cfg) is not None and len(calls) == 2

    def broken(*a, **k):
        raise ValueError("no such database")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(GlandsegError, match="cannot open the study storage"):
        study._storage(cfg)
