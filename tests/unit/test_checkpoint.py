"""Checkpoints: safetensors weights, model resolution, resumable training state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from glandseg import GlandsegError
from glandseg.models import registry
from glandseg.models.unet import UNet
from glandseg.train import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")


def unet(seed: int, **kw) -> UNet:
    torch.manual_seed(seed)
    return UNet(width=kw.pop("width", 4), **kw)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=k)


def test_save_load_round_trip_fp32(tmp_path: Path) -> None:
    src, dst = unet(0), unet(1)
    with pytest.raises(AssertionError):
        assert_same_weights(src, dst)  # different seeds really differ
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(path, src, metadata={"epoch": 3, "val": {"f1": np.float32(0.5)}})
    ckpt.load_weights(dst, path)
    assert_same_weights(src, dst)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["epoch"]) == 3 and json.loads(meta["val"]) == {"f1": 0.5}


def test_save_load_round_trip_half(tmp_path: Path) -> None:
    src, dst = unet(0, batch_norm=True), unet(1, batch_norm=True)
    path = tmp_path / "w16.safetensors"
    ckpt.save_weights(path, src, half=True)
    raw = load_file(str(path))
    assert raw["head.weight"].dtype == torch.float16
    assert raw["downs.0.1.num_batches_tracked"].dtype == torch.int64  # ints stay ints
    ckpt.load_weights(dst, path)
    for k, v in dst.state_dict().items():
        assert v.dtype == src.state_dict()[k].dtype  # cast back to the model's dtypes
        if v.is_floating_point():
            torch.testing.assert_close(v, src.state_dict()[k].half().float(), atol=0, rtol=0)
    assert_same_weights(src, dst, atol=1e-3)


def test_half_file_is_about_half_the_size(tmp_path: Path) -> None:
    m = unet(0)
    ckpt.save_weights(tmp_path / "a.safetensors", m)
    ckpt.save_weights(tmp_path / "b.safetensors", m, half=True)
    full, half = (tmp_path / "a.safetensors").stat().st_size, (tmp_path / "b.safetensors").stat().st_size
    assert half < 0.6 * full


def test_wrong_architecture_gives_glandseg_error(tmp_path: Path) -> None:
    path = tmp_path / "unet.safetensors"
    ckpt.save_weights(path, unet(0))
    other = registry.build_model({**registry.default_config("unet-lite0")}, pretrained=False)
    with pytest.raises(GlandsegError, match="do not fit"):
        ckpt.load_weights(other, path)


def test_same_keys_other_shapes_gives_glandseg_error(tmp_path: Path) -> None:
    path = tmp_path / "w4.safetensors"
    ckpt.save_weights(path, unet(0, width=4))
    with pytest.raises(GlandsegError):
        ckpt.load_weights(unet(0, width=8), path)


def test_missing_or_corrupt_weights_file(tmp_path: Path) -> None:
    with pytest.raises(GlandsegError, match="not found"):
        ckpt.load_weights(unet(0), tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(GlandsegError, match="not a valid safetensors"):
        ckpt.load_weights(unet(0), bad)


def _run_folder(tmp_path: Path, weights: tuple[str, ...] = ()) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = registry.default_config("unet")
    cfg["model_args"]["width"] = 4
    ckpt.save_json(run / "config.json", cfg)
    for tag in weights:
        ckpt.save_weights(run / f"{tag}.safetensors", unet(0))
    return run


def test_resolve_model_run_folder_without_weights(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    with pytest.raises(GlandsegError, match="no best.safetensors or last.safetensors"):
        ckpt.resolve_model(str(run))


def test_resolve_model_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(GlandsegError, match="not a run folder"):
        ckpt.resolve_model(str(tmp_path))


def test_resolve_model_prefers_best_then_last(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, ("last",))
    cfg, w = ckpt.resolve_model(str(run))
    assert w == run / "last.safetensors" and cfg["model_args"]["width"] == 4
    ckpt.save_weights(run / "best.safetensors", unet(1))
    assert ckpt.resolve_model(str(run))[1] == run / "best.safetensors"
    # a .safetensors file finds the config.json beside it
    cfg2, w2 = ckpt.resolve_model(str(run / "last.safetensors"))
    assert w2 == run / "last.safetensors" and cfg2 == cfg
    model, _ = ckpt.load_model(str(run))
    assert_same_weights(model, unet(1))
    assert not model.training


def test_resolve_model_names(tmp_path: Path) -> None:
    cfg, w = ckpt.resolve_model("unet")
    assert w is None and cfg["model"] == "unet"
    with pytest.raises(GlandsegError, match="unknown model"):
        ckpt.resolve_model("no-such-model")
    lone = tmp_path / "lone.safetensors"
    ckpt.save_weights(lone, unet(0))
    with pytest.raises(GlandsegError, match="no config"):
        ckpt.resolve_model(str(lone))


def test_load_json_errors(tmp_path: Path) -> None:
    with pytest.raises(GlandsegError, match="not found"):
        ckpt.load_json(tmp_path / "x.json")
    (tmp_path / "b.json").write_text("{nope")
    with pytest.raises(GlandsegError, match="invalid JSON"):
        ckpt.load_json(tmp_path / "b.json")
    (tmp_path / "l.json").write_text("[1]")
    with pytest.raises(GlandsegError, match=r"expected a JSON object, got list; fix it$"):
        ckpt.load_json(tmp_path / "l.json", hint="fix it")
    (tmp_path / "u.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(GlandsegError, match="invalid JSON"):
        ckpt.load_json(tmp_path / "u.json")


def _step(model, opt, sched, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 32, 32, generator=g)
    loss = model(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _opt(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return opt, sched


def test_train_state_round_trip(tmp_path: Path) -> None:
    model = unet(0)
    opt, sched = _opt(model)
    for s in range(2):
        _step(model, opt, sched, s)
    ckpt.save_weights(tmp_path / "last.safetensors", model)
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    loader_rng = torch.Generator().manual_seed(77)
    torch.randperm(10, generator=loader_rng)
    tensors, meta = ckpt.train_state(opt, sched, None, loader_rng)
    save_file(tensors, str(tmp_path / "state.safetensors"))
    (tmp_path / "state.json").write_text(json.dumps(meta))
    want_torch, want_np, want_py = torch.rand(5), np.random.rand(3), random.random()
    want_perm = torch.randperm(10, generator=loader_rng)
    # the uninterrupted third step
    _step(model, opt, sched, 2)
    want_params = {k: v.clone() for k, v in model.state_dict().items()}
    want_lr = opt.param_groups[0]["lr"]

    # "restart the process": fresh model, optimizer, scheduler and scrambled RNGs
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    model2 = unet(5)
    ckpt.load_weights(model2, tmp_path / "last.safetensors")
    opt2, sched2 = _opt(model2)
    loader_rng2 = torch.Generator().manual_seed(5)
    ckpt.restore_train_state(load_file(str(tmp_path / "state.safetensors")),
                             json.loads((tmp_path / "state.json").read_text()), opt2, sched2,
                             None, generator=loader_rng2)
    assert sched2.last_epoch == 2
    assert torch.equal(torch.randperm(10, generator=loader_rng2), want_perm)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert set(s2) == set(s1) and len(s2) == len(list(model.parameters()))
    assert float(s2[0]["step"]) == 2.0
    torch.testing.assert_close(torch.rand(5), want_torch, rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), want_np)
    assert random.random() == want_py
    _step(model2, opt2, sched2, 2)
    assert opt2.param_groups[0]["lr"] == pytest.approx(want_lr)
    for k, v in model2.state_dict().items():
        torch.testing.assert_close(v, want_params[k], rtol=1e-6, atol=1e-7, msg=k)


def test_train_state_without_optimizer_restores_rng_only(tmp_path: Path) -> None:
    model = unet(0)
    opt, sched = _opt(model)
    _step(model, opt, sched, 0)
    torch.manual_seed(7)
    tensors, meta = ckpt.train_state(opt, sched, None)
    want = torch.rand(3)
    opt2, sched2 = _opt(unet(0))
    torch.manual_seed(8)
    ckpt.restore_train_state(tensors, meta, None, None, None)
    torch.testing.assert_close(torch.rand(3), want, rtol=0, atol=0)
    assert opt2.state_dict()["state"] == {} and sched2.last_epoch == 0


def test_train_state_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    model = unet(0)
    opt, sched = _opt(model)
    _step(model, opt, sched, 0)
    tensors, meta = ckpt.train_state(opt, sched, None)
    other = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(GlandsegError, match=r"^x\.safetensors: training state does not fit"):
        ckpt.restore_train_state(tensors, meta, other, None, None, source="x.safetensors")
    del meta["rng_numpy"]
    with pytest.raises(GlandsegError, match="KeyError"):
        ckpt.restore_train_state(tensors, meta, None, None, None, source="x.safetensors")
