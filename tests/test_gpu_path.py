"""The device input path gives the network exactly what the CPU path gives it (s4g_train/feed.py,
s4g_train/device_aug.py), on a CPU device here and on CUDA when a GPU is present (those tests skip otherwise).

* geometric augmentation of a batch on the device = ``data.geometric`` pair by pair, for every flip / rotation;
* normalisation on the device = the contract's ``ViewSpec.normalise_batch``, bit for bit, all 256 × 3 values;
* a whole training epoch through ``TrainFeed`` (device path, persistent workers) = the CPU path's batches;
* embedding through the device path = the CPU path; DSS mining on device tensors = on host arrays;
* precision / layout choices per device (bf16 without GradScaler on bf16 GPUs, fp16 + scaler on older ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s4g_engine.preprocess import DataContract
from s4g_train.config import AugConfig
from s4g_train.data import PairedTrainDataset, ViewDataset, geometric
from s4g_train.device import pick_amp, use_channels_last, use_device_preprocess
from s4g_train.device_aug import DeviceNormaliser, geometric_batch
from s4g_train.feed import TrainFeed

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device: the device path is tested on the CPU only")
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def _contract(polar: bool = False) -> DataContract:
    return DataContract.build(ground_size=(16, 64), aerial_size=(16, 64) if polar else (32, 32), mean=MEAN, std=STD,
                              polar_aerial=polar)


def _pairs(tmp: Path, n: int = 12) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(5)
    q, r = [], []
    for i in range(n):
        gp, ap = tmp / f"g{i}.jpg", tmp / f"a{i}.png"
        Image.fromarray(rng.integers(0, 256, (24, 96, 3), dtype=np.uint8)).save(gp, quality=92)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(ap)
        q.append(str(gp))
        r.append(str(ap))
    return q, r, rng.permutation(n)


def _bits(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().contiguous().numpy().view(np.uint32)


# ---------------------------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("device", DEVICES)
def test_geometric_batch_equals_the_numpy_augmentation_pair_by_pair(device: str, rng: np.random.Generator) -> None:
    b = 16
    ground = rng.integers(0, 256, (b, 6, 24, 3), dtype=np.uint8)
    aerial = rng.integers(0, 256, (b, 10, 10, 3), dtype=np.uint8)
    flip = np.array([i % 2 == 1 for i in range(b)])  # every (flip, r) combination, twice
    r = np.array([(i // 2) % 4 for i in range(b)])
    g, a = geometric_batch(torch.from_numpy(ground.copy()).to(device), torch.from_numpy(aerial.copy()).to(device),
                           flip, r)
    for i in range(b):
        eg, ea = geometric(ground[i], aerial[i], bool(flip[i]), int(r[i]))
        np.testing.assert_array_equal(g[i].cpu().numpy(), eg, err_msg=f"ground, flip={flip[i]} r={r[i]}")
        np.testing.assert_array_equal(a[i].cpu().numpy(), ea, err_msg=f"aerial, flip={flip[i]} r={r[i]}")
    assert not np.array_equal(g.cpu().numpy(), ground)  # it did something


def test_geometric_batch_refuses_what_the_cpu_augmentation_refuses() -> None:
    g, a = torch.zeros(2, 4, 10, 3, dtype=torch.uint8), torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="divisible by 4"):
        geometric_batch(g, a, np.array([False, False]), np.array([0, 1]))
    with pytest.raises(ValueError, match="batch size"):
        geometric_batch(g, a, np.array([False]), np.array([0]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_device_normaliser_is_bit_identical_to_the_contract(device: str, channels_last: bool) -> None:
    spec = _contract().ground  # (16, 64): 1024 pixels, every byte value in every channel
    x = np.stack([np.roll(np.arange(1024) % 256, 7 * c).reshape(16, 64) for c in range(3)], -1).astype(np.uint8)
    x = np.stack([x, x[::-1, ::-1]])
    got = DeviceNormaliser(spec, device)(torch.from_numpy(x), channels_last=channels_last)
    want = spec.normalise_batch(x)
    assert got.shape == (2, 3, 16, 64) and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    np.testing.assert_array_equal(_bits(got), want.view(np.uint32))
    # … and the table itself against float64 arithmetic (the contract's values are the right ones)
    ref = (np.arange(256)[None, :] / 255.0 - np.array(MEAN)[:, None]) / np.array(STD)[:, None]
    np.testing.assert_allclose(spec._lut, ref, rtol=0, atol=1e-6)


def test_device_normaliser_refuses_polar_views_and_wrong_input() -> None:
    with pytest.raises(ValueError, match="polar"):
        DeviceNormaliser(_contract(polar=True).aerial, "cpu")
    with pytest.raises(ValueError, match="expected uint8"):
        DeviceNormaliser(_contract().ground, "cpu")(torch.zeros(1, 16, 64, 3))


# ---------------------------------------------------------------------------------------------- whole epochs
def _epoch(feed: TrainFeed, batches: list[np.ndarray], e: int) -> list[tuple[torch.Tensor, ...]]:
    return [(g.cpu(), a.cpu(), ids.cpu()) for g, a, ids in feed.epoch(batches, e, 0)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("photometric,polar,mode", [(False, False, "raw"), (True, False, "stage"),
                                                    (False, True, "stage"), (True, True, "stage")])
def test_train_feed_device_path_gives_the_cpu_path_batches(tmp_path: Path, device: str, photometric: bool,
                                                           polar: bool, mode: str) -> None:
    if polar:
        pytest.importorskip("s4g_engine._core", reason="the compiled core provides polar_transform")
    q, r, pos = _pairs(tmp_path)
    kw = dict(contract=_contract(polar), aug=AugConfig(photometric=photometric, dropout_p=0.5), seed=4, cache=True)
    batches = [np.array([3, 0, 7, 1]), np.array([11, 2, 5, 9]), np.array([4, 6, 8, 10])]
    cpu = TrainFeed(PairedTrainDataset(q, r, pos, **kw), device=torch.device("cpu"))
    dev = TrainFeed(PairedTrainDataset(q, r, pos, **kw), device=torch.device(device), on_device=True,
                    channels_last=True)
    assert (cpu.mode, dev.mode) == ("float", mode)
    for e in (1, 2):
        want, got = _epoch(cpu, batches, e), _epoch(dev, batches, e)
        assert len(want) == len(got) == 3
        for (wg, wa, wi), (gg, ga, gi) in zip(want, got):
            np.testing.assert_array_equal(_bits(gg), _bits(wg))
            np.testing.assert_array_equal(_bits(ga), _bits(wa))
            assert torch.equal(gi, wi)
    assert not torch.equal(want[0][0], _epoch(cpu, batches, 3)[0][0])  # another epoch, another augmentation


def test_persistent_workers_serve_every_epoch_and_resume_position(tmp_path: Path) -> None:
    q, r, pos = _pairs(tmp_path)
    kw = dict(contract=_contract(), aug=AugConfig(photometric=False), seed=4, cache=True)
    batches = [np.array([3, 0, 7, 1]), np.array([11, 2, 5, 9]), np.array([4, 6, 8, 10])]
    ref = TrainFeed(PairedTrainDataset(q, r, pos, **kw), device=torch.device("cpu"))
    feed = TrainFeed(PairedTrainDataset(q, r, pos, **kw), device=torch.device("cpu"), num_workers=2,
                     persistent_workers=True, on_device=True, channels_last=False)
    try:
        for e in (1, 2):
            want, got = _epoch(ref, batches, e), _epoch(feed, batches, e)
            for w, g in zip(want, got):
                assert all(torch.equal(x, y) for x, y in zip(w, g))
        loader = feed._loader
        tail = [(g, a, i) for g, a, i in feed.epoch(batches, 3, start=2)]  # a resumed epoch: from batch 2 on
        assert feed._loader is loader  # the same workers
        assert len(tail) == 1 and torch.equal(tail[0][2], torch.from_numpy(batches[2]))
        assert torch.equal(tail[0][0], _epoch(ref, batches, 3)[2][0])
    finally:
        feed.close()


# ---------------------------------------------------------------------------------------------- embedding, mining
@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    from s4g_train.model import ModelConfig, S4GModel

    torch.manual_seed(0)
    return S4GModel(ModelConfig(backbone="resnet10t", ground_size=(16, 64), aerial_size=(32, 32))).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cached", [True, False])
def test_embedding_device_path_equals_cpu_path(tmp_path: Path, small_model: torch.nn.Module, device: str,
                                               cached: bool) -> None:
    from s4g_train.evaluate import embed_dataset

    q, _, _ = _pairs(tmp_path)
    spec = _contract().ground
    ds = ViewDataset(q, spec, cache=cached)
    kw = dict(batch_size=5, amp_dtype=None, progress=False)
    want = embed_dataset(small_model, ds, device="cpu", device_preprocess=False, **kw)
    model = small_model.to(device)
    got = embed_dataset(model, ds, device=device, device_preprocess=True, **kw)
    small_model.to("cpu")
    assert got.shape == (12, small_model.embed_dim)
    if device == "cpu":  # same inputs, same batches, same kernels: the same bits
        np.testing.assert_array_equal(got, want)
    else:  # the same inputs on another device: GPU convolution rounding (TF32 in cuDNN by default)
        cos = (got.astype(np.float64) * want).sum(axis=1)
        assert cos.min() > 0.999, cos.min()
        np.testing.assert_allclose(got, want, atol=5e-3)


def test_probe_embedding_from_the_cache_equals_decoding_the_files(tmp_path: Path,
                                                                  small_model: torch.nn.Module) -> None:
    from s4g_train.evaluate import embed_training_pairs

    q, r, pos = _pairs(tmp_path)
    split = type("Split", (), {"queries": q, "references": r, "positive": pos})()
    c = _contract()
    ds = PairedTrainDataset(q, r, pos, contract=c, aug=AugConfig(), seed=0, cache=True)
    ids = np.array([1, 4, 9])
    kw = dict(batch_size=4, amp_dtype=None, progress=False)
    want = embed_training_pairs(small_model, split, c, ids, **kw)  # decodes the files
    got = embed_training_pairs(small_model, split, c, ids, grounds=ds.grounds, aerials=ds.aerials, **kw)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    assert got[0].shape == (3, small_model.embed_dim) and got[1].shape == (3, small_model.embed_dim)
    np.testing.assert_array_equal(got[2], np.searchsorted(np.unique(pos[ids]), pos[ids]))


@needs_cuda
def test_dss_mining_on_device_tensors_gives_the_host_lists(rng: np.random.Generator, cuda_device: int) -> None:
    from s4g_train.sampling import dss_neighbours
    from s4g_train.schedule import _train_r1

    n, d = 300, 64
    g = rng.standard_normal((n, d)).astype(np.float32)
    a = (g + 0.7 * rng.standard_normal((n, d))).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    pos = rng.permutation(n)
    ar = np.empty_like(a)
    ar[pos] = a
    want = dss_neighbours(g, ar, pos, 16)
    got = dss_neighbours(torch.from_numpy(g).cuda(), torch.from_numpy(ar).cuda(), pos, 16)
    np.testing.assert_array_equal(got, want)
    assert _train_r1(torch.from_numpy(g).cuda(), torch.from_numpy(ar).cuda(), pos) == _train_r1(g, ar, pos)


# ---------------------------------------------------------------------------------------------- device choices
def test_auto_precision_is_bf16_without_scaler_on_bf16_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert pick_amp("auto", cuda) == (torch.bfloat16, False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert pick_amp("auto", cuda) == (torch.float16, True)
    assert pick_amp("fp16", cuda) == (torch.float16, True)
    assert pick_amp("off", cuda) == (None, False)


def test_layout_and_input_path_follow_the_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (use_channels_last(None, cpu), use_channels_last(None, cuda)) == (False, True)
    assert (use_channels_last(True, cpu), use_channels_last(False, cuda)) == (True, False)
    assert (use_device_preprocess(None, cpu), use_device_preprocess(None, cuda)) == (False, True)
    assert use_device_preprocess(True, cpu) and not use_device_preprocess(False, cuda)


# ---------------------------------------------------------------------------------------------- GPU JPEG decoding
def test_nvjpeg_switch_decodes_close_to_the_contract(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    from s4g_train.gpu_decode import load_stage_batch

    y, x = np.mgrid[0:120, 0:200]
    smooth = np.stack([(x + y) % 256, (2 * x) % 256, (3 * y) % 256], -1).astype(np.uint8)
    paths = []
    for i in range(3):
        p = tmp_path / f"s{i}.jpg"
        Image.fromarray(np.roll(smooth, 17 * i, axis=1)).save(p, quality=95)
        paths.append(str(p))
    Image.fromarray(smooth).save(tmp_path / "t.png")
    paths.append(str(tmp_path / "t.png"))  # not a JPEG: the contract's decoder
    spec = _contract().ground  # (16, 64), bilinear
    got = load_stage_batch(paths, spec, device="cuda" if CUDA else "cpu", batch=2)
    want = np.stack([spec.load(p) for p in paths])
    assert got.shape == want.shape == (4, 16, 64, 3)
    np.testing.assert_array_equal(got[3], want[3])
    diff = np.abs(got[:3].astype(int) - want[:3].astype(int))
    assert diff.mean() < 6.0, diff.mean()  # another IDCT and resize filter: close, not identical
