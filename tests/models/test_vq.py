"""VQ tokenizer on real frames with tiny widths: shapes, code range, training, checkpoints; PSNR / SSIM sanity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from worlddrive.data.dataset import WorldDriveDataset
from worlddrive.models import vq
from worlddrive.models.vq import VQConfig, VQTokenizer, evaluate_tokenizer, psnr, ssim, train_vq_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py: tiny models, busy cores
TINY = VQConfig(channels=(16, 32), codebook_size=64, codebook_dim=8)


@pytest.fixture(scope="module")
def frames(split_data_dir: Path) -> torch.Tensor:
    ds = WorldDriveDataset(split_data_dir, "train")
    return torch.stack([ds[i]["camera"][-1] for i in range(0, len(ds), 10)])  # (B, 3, 128, 256) uint8


@pytest.fixture(scope="module")
def trained(split_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vq_ckpt")
    return out, train_vq_tokenizer(split_data_dir, out, steps=40, batch_size=4, seed=0, config=TINY, lr=3e-3)


def test_psnr_ssim_sanity() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 48, generator=g)
    noisy = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    noisier = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert psnr(a, a).shape == (2,) and torch.isinf(psnr(a, a)).all()
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    assert (psnr(a, noisier) < psnr(a, noisy)).all() and (psnr(a, noisy) < 30).all()
    assert (ssim(a, noisier) < ssim(a, noisy)).all() and (ssim(a, noisy) < 0.99).all()
    torch.testing.assert_close(psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.1)), torch.tensor([20.0]))
    assert ssim(a[None], noisy[None]).shape == (1, 2)  # any leading dims


def test_encode_decode_shapes_and_code_range(frames: torch.Tensor) -> None:
    model = VQTokenizer(TINY).eval()
    codes = model.encode(frames)
    assert codes.shape == (len(frames), *TINY.code_hw) == (len(frames), 16, 32)
    assert codes.dtype == torch.long and codes.min() >= 0 and codes.max() < TINY.codebook_size
    recon = model.decode(codes)
    assert recon.shape == frames.shape and recon.dtype == torch.float32
    assert recon.min() >= 0 and recon.max() <= 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.encode(frames)  # never updates the codebook, whatever the mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="expected frames"):
        model.encode(frames[:, :, :64])


def test_training_improves_round_trip(split_data_dir: Path, trained: tuple[Path, dict]) -> None:
    torch.manual_seed(0)
    untrained = evaluate_tokenizer(VQTokenizer(TINY), WorldDriveDataset(split_data_dir, "val"))
    _, metrics = trained
    assert metrics["steps"] == 40 and math.isfinite(metrics["train_l1"])
    assert metrics["val_psnr"] > untrained["psnr"] + 3, (metrics, untrained)
    assert metrics["val_ssim"] > untrained["ssim"]
    assert 0 < metrics["val_codebook_usage"] <= 1


def test_checkpoint_round_trips_exactly(trained: tuple[Path, dict], frames: torch.Tensor) -> None:
    out, _ = trained
    assert sorted(p.name for p in out.iterdir()) == sorted([vq.WEIGHTS, vq.CONFIG])  # no temporary files, no pickles
    model = VQTokenizer.load(out)
    assert model.config == TINY and not model.training
    again = out.parent / "again"
    model.save(again)
    loaded = VQTokenizer.load(again)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(model.encode(frames), loaded.encode(frames))
    assert torch.equal(model.decode(model.encode(frames)), loaded.decode(loaded.encode(frames)))


def test_mismatched_config_names_the_key(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trained
    VQTokenizer.load(out).save(tmp_path)
    config = json.loads((tmp_path / vq.CONFIG).read_text())
    (tmp_path / vq.CONFIG).write_text(json.dumps({**config, "codebook_size": 128}))
    with pytest.raises(ValueError, match="codebook_size"):
        VQTokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="'patches'"):
        VQConfig.from_dict({**config, "patches": 2})
    with pytest.raises(ValueError, match="'channels'"):
        VQConfig.from_dict({k: v for k, v in config.items() if k != "channels"})


def test_config_validates_sizes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        VQConfig(image_hw=(100, 256))
    assert VQConfig().code_hw == (16, 32)
