"""World-model heads with tiny widths on a few real samples: shapes, losses that fall when overfitting, the bev
head's trajectory conditioning and the geometry behind it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from worlddrive.data.dataset import WorldDriveDataset
from worlddrive.data.generate import generate
from worlddrive.models.vq import VQConfig, VQTokenizer
from worlddrive.models.world_model import OCCUPANCY_CHANNELS, Raster, WorldModel, iou, reframe, warp
from worlddrive.sim.camera import BEV_CHANNELS, BevConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py: tiny models, busy cores
D, H, W = 32, 8, 16  # backbone width, image patches
SMALL = {"width": 16, "occ_hw": (32, 32), "scene_channels": 4}


@pytest.fixture(scope="module")
def wm_dataset(tmp_path_factory: pytest.TempPathFactory) -> WorldDriveDataset:
    out = tmp_path_factory.mktemp("wm_data")
    generate(["crosswalk"], 1, 24, out, progress=False)
    return WorldDriveDataset(out, "all")


@pytest.fixture(scope="module")
def batch(wm_dataset: WorldDriveDataset) -> dict:
    """Four real samples. This road has no lights, so their light labels (t + 0 ... 4 s) are replaced by what a
    signalized road shows: none; green, turning yellow, then red; red; yellow, then red."""
    b = default_collate([wm_dataset[i] for i in (0, 12, 24, 36)])
    b["lights"] = torch.tensor([[-1] * 9, [0] * 5 + [1] * 2 + [2] * 2, [2] * 9, [1] * 2 + [2] * 7])
    return b


@pytest.fixture(scope="module")
def vq_tokenizer(batch: dict) -> VQTokenizer:
    """Untrained, but with its codebook k-means initialised on the batch's frames, so it is fixed from now on."""
    torch.manual_seed(0)
    tokenizer = VQTokenizer(VQConfig(channels=(8, 16), codebook_size=32, codebook_dim=8))
    tokenizer.encode(batch["future_camera"][:, 0])
    return tokenizer


def entropy(p: torch.Tensor) -> float:
    """In nats, of a distribution given as probabilities."""
    p = p[p > 0]
    return -(p * p.log()).sum().item()


def grid_for(batch: dict) -> torch.Tensor:
    """A fixed random stand-in for the backbone's hidden states, one per sample."""
    return torch.randn(len(batch["trajectory"]), H, W, D, generator=torch.Generator().manual_seed(1))


def test_shapes_of_every_head(batch: dict, vq_tokenizer: VQTokenizer) -> None:
    torch.manual_seed(0)
    wm = WorldModel(D, ("vq", "frame", "bev"), tokenizer=vq_tokenizer, **SMALL)
    for h, w in ((H, W), (4, 8)):  # the grid's size is read from its shape
        grid = torch.randn(2, h, w, D)
        assert wm.vq_head(grid).shape == (2, 32, 16, 32)
        assert wm.predict_codes(grid).shape == (2, 16, 32)
        frames = wm.predict_frames(grid)
        assert frames.shape == (2, 4, 3, 64, 128) and frames.min() >= 0 and frames.max() <= 1
        occ, lights = wm.decode(wm.encode_scene(grid), torch.randn(2, 5, 8, 3))
        assert occ.shape == (2, 5, 8, 2, 32, 32) and lights.shape == (2, 5, 8, 4)
    occ_p, light_p = wm.predict_bev(torch.randn(1, H, W, D), torch.zeros(1, 3, 8, 3))
    assert occ_p.shape == (1, 3, 8, 2, 32, 32) and ((occ_p >= 0) & (occ_p <= 1)).all()
    torch.testing.assert_close(light_p.sum(-1), torch.ones(1, 3, 8))
    loss, logs = wm.loss(grid_for(batch), batch)
    assert loss.ndim == 0 and all(math.isfinite(v) for v in logs.values())
    assert set(logs) == {
        "vq_ce", "vq_acc", "frame_l1", "frame_psnr", "frame_ssim", "bev_occ_bce", "bev_light_ce",
        "bev_iou_1s", "bev_iou_2s", "bev_light_acc_1s", "bev_light_acc_2s", "wm_loss",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("head", "terms"), [("vq", ["vq_ce"]), ("frame", ["frame_l1"]), ("bev", ["bev_occ_bce", "bev_light_ce"])]
)
def test_each_head_overfits_real_samples(head: str, terms: list[str], batch: dict, vq_tokenizer: VQTokenizer) -> None:
    torch.manual_seed(0)
    wm = WorldModel(D, (head,), tokenizer=vq_tokenizer, **SMALL)
    opt = torch.optim.Adam(wm.parameters(), lr=1e-2)
    grid = grid_for(batch)
    first = None
    for _ in range(40):
        loss, logs = wm.loss(grid, batch)
        first = first or logs
        opt.zero_grad()
        loss.backward()
        opt.step()
    for term in terms:
        assert logs[term] < 0.7 * first[term], (term, first[term], logs[term])
    # below what the best prediction that ignores the grid and the position could reach
    if head == "vq":
        codes = vq_tokenizer.encode(batch["future_camera"][:, 0])
        assert logs["vq_ce"] < entropy(codes.flatten().bincount() / codes.numel()) and logs["vq_acc"] > 0.5
    if head == "frame":
        assert logs["frame_psnr"] > first["frame_psnr"] + 5
    if head == "bev":  # ~1 % of the cells are occupied: a constant prediction's IoU is 0 or ~0.01
        occupied = F.adaptive_max_pool2d(batch["future_bev"][:, :, OCCUPANCY_CHANNELS].flatten(0, 2).float(), 32).mean()
        assert occupied < 0.02 and logs["bev_iou_1s"] > 0.1 and logs["bev_iou_2s"] > 0.1, logs
        assert logs["bev_light_acc_1s"] == logs["bev_light_acc_2s"] == 1.0


def test_loss_is_the_weighted_sum_of_logged_terms(batch: dict) -> None:
    torch.manual_seed(0)
    wm = WorldModel(D, ("frame", "bev"), weights={"frame": 2.0}, **SMALL)
    loss, logs = wm.loss(grid_for(batch), batch)
    expected = 2.0 * logs["frame_l1"] + logs["bev_occ_bce"] + logs["bev_light_ce"]
    assert loss.item() == pytest.approx(expected, rel=1e-5) and logs["wm_loss"] == pytest.approx(expected, rel=1e-5)


def test_bev_decode_depends_on_the_candidate_alone() -> None:
    torch.manual_seed(0)
    wm = WorldModel(D, ("bev",), **SMALL).eval()
    scene = wm.encode_scene(torch.randn(2, H, W, D))
    straight = torch.stack([torch.linspace(2, 30, 8), torch.zeros(8), torch.zeros(8)], -1)  # (8, 3)
    left = torch.stack([torch.linspace(2, 20, 8), torch.linspace(0, 10, 8), torch.linspace(0, 0.8, 8)], -1)
    stop = torch.zeros(8, 3)
    candidates = torch.stack([straight, left, stop, straight, straight])[None].expand(2, -1, -1, -1)  # (2, 5, 8, 3)
    with torch.no_grad():
        occ, lights = wm.decode(scene, candidates)
        alone, alone_lights = wm.decode(scene, candidates[:, 1:2])
    for out in (occ, lights):
        assert not torch.allclose(out[:, 0], out[:, 1]) and not torch.allclose(out[:, 0], out[:, 2])
        torch.testing.assert_close(out[:, 0], out[:, 3], rtol=0, atol=1e-6)
        torch.testing.assert_close(out[:, 0], out[:, 4], rtol=0, atol=1e-6)
    torch.testing.assert_close(alone[:, 0], occ[:, 1], rtol=0, atol=1e-5)  # candidates do not see each other
    torch.testing.assert_close(alone_lights[:, 0], lights[:, 1], rtol=0, atol=1e-5)


def test_warp_moves_the_current_bev_onto_the_future_one(wm_dataset: WorldDriveDataset) -> None:
    """Warped into the expert's future poses, today's crosswalks land where the future rasters have them."""
    full = Raster.of_bev(BevConfig(), (128, 128))
    cw = BEV_CHANNELS.index("crosswalks")
    warped_iou, still_iou = [], []
    for i in range(len(wm_dataset)):
        item = wm_dataset[i]
        now = torch.stack([item["bev"][cw].float(), torch.ones(128, 128)])[None]  # (1, 2, H, W): crosswalks, inside
        out = warp(now, full, item["trajectory"][None], full)[0]  # (T, 2, H, W)
        inside = out[:, 1] > 0.999  # cells whose source lies within today's raster
        future = (item["future_bev"][:, cw] > 0) & inside  # (T, H, W)
        if future.sum() < 200 or item["trajectory"][3, 0] < 5:  # want crosswalks in view and an ego that moves
            continue
        warped_iou.append(iou((out[:, 0] > 0.5) & inside, future).item())
        still_iou.append(iou((now[0, 0] > 0) & inside, future).item())
    assert len(warped_iou) >= 2
    assert sum(warped_iou) / len(warped_iou) > 0.85 > sum(still_iou) / len(still_iou) + 0.3, (warped_iou, still_iou)
    same = warp(now, full, torch.zeros(1, 1, 3), full)[0, 0]  # the identity pose gives the input back
    torch.testing.assert_close(same, now[0], rtol=0, atol=1e-6)


def test_warp_follows_the_bev_conventions() -> None:
    """A mark 20 m ahead and 5 m left, seen from a pose 10 m ahead, 2 m left and turned 90 degrees left, lies 3 m
    ahead and 10 m to the right: at pixel (96 - 3 / 0.5, 64 + 10 / 0.5) with the ego at (96, 64), 0.5 m/px."""
    full = Raster.of_bev(BevConfig(), (128, 128))
    now = torch.zeros(1, 1, 128, 128)
    now[0, 0, 96 - 40, 64 - 10] = 1.0
    out = warp(now, full, torch.tensor([[[10.0, 2.0, math.pi / 2]]]), full)[0, 0, 0]  # (H, W)
    assert out.argmax().item() == 90 * 128 + 84 and out.max().item() == pytest.approx(1.0, abs=1e-4)


def test_reframe_moves_a_map_from_one_pose_to_another() -> None:
    """A mark 20 m ahead and 5 m left of pose (10, 0, facing +y) is at (5, 20) now; from pose (12, 2, facing -x) it
    lies 7 m ahead and 18 m to the right: pixel (96 - 7 / 0.5, 64 + 18 / 0.5) with the ego at (96, 64), 0.5 m/px."""
    full = Raster.of_bev(BevConfig(), (128, 128))
    maps = torch.zeros(2, 1, 128, 128)
    maps[:, 0, 96 - 40, 64 - 10] = 1.0
    src = torch.tensor([[10.0, 0.0, math.pi / 2], [10.0, 0.0, math.pi / 2]])
    dst = torch.tensor([[12.0, 2.0, math.pi], [10.0, 0.0, math.pi / 2]])
    out = reframe(maps, full, src, dst)[:, 0]  # (2, H, W)
    assert out[0].argmax().item() == 82 * 128 + 100 and out[0].max().item() == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(out[1], maps[1, 0], rtol=0, atol=1e-6)  # the same pose: unchanged


def test_tokenizer_stays_frozen_and_outside_the_module(vq_tokenizer: VQTokenizer, batch: dict) -> None:
    wm = WorldModel(D, ("vq",), tokenizer=vq_tokenizer, **SMALL).train()
    assert not any(k.startswith("tokenizer") for k in wm.state_dict())
    assert all(p.requires_grad for p in wm.parameters()) and not any(p.requires_grad for p in vq_tokenizer.parameters())
    before = {k: v.clone() for k, v in vq_tokenizer.state_dict().items()}
    wm.loss(grid_for(batch), batch)[0].backward()
    assert not vq_tokenizer.training
    assert all(torch.equal(before[k], v) for k, v in vq_tokenizer.state_dict().items())


def test_bad_arguments_are_named(vq_tokenizer: VQTokenizer) -> None:
    with pytest.raises(ValueError, match="'depth'"):
        WorldModel(D, ("depth",))
    with pytest.raises(ValueError, match="VQTokenizer"):
        WorldModel(D, ("vq",))
    with pytest.raises(ValueError, match="image_hw"):
        WorldModel(D, ("vq",), image_hw=(64, 128), tokenizer=vq_tokenizer)
    with pytest.raises(ValueError, match="occ_hw"):
        WorldModel(D, ("bev",), occ_hw=(48, 48))
    with pytest.raises(ValueError, match="occ_hw"):
        WorldModel(D, ("bev",), occ_hw=(32, 16))
    with pytest.raises(ValueError, match="'frame'"):
        WorldModel(D, ("bev",), weights={"frame": 1.0})
