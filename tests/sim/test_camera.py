"""Front camera and BEV renderers: shapes, purity, and that what is drawn follows the state (and only the state)."""

import copy

import numpy as np
import pytest

from worlddrive.sim import camera
from worlddrive.sim.camera import (
    BEV_CHANNELS,
    ROAD_RGB,
    BevRenderer,
    FrontCamera,
    _clean,
    _cross,
    _ear_clip,
    bev_to_rgb,
)
from worlddrive.sim.state import CAR, CROSS, DASHED_WHITE, GREEN, RED, WAIT, RoadMap, WorldState, empty
from worlddrive.sim.synthetic import synthetic_scene

CH = {name: i for i, name in enumerate(BEV_CHANNELS)}


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def straight_road(x0: float = -60.0) -> RoadMap:
    """One 7 m road along +x from x0 to 150 m, sidewalks both sides, a dashed centre line."""
    return RoadMap(
        drivable=[_rect(x0, -3.5, 150.0, 3.5)],
        sidewalks=[_rect(x0, 3.5, 150.0, 6.0), _rect(x0, -6.0, 150.0, -3.5)],
        crosswalks=[],
        markings=[np.array([[x0, 0.0], [150.0, 0.0]], np.float32)],
        marking_kind=np.array([DASHED_WHITE], np.int8),
        stop_lines=np.zeros((0, 2, 2), np.float32),
    )


def lone_ego(**arrays: np.ndarray) -> WorldState:
    """The ego at the origin facing +x in the right lane's place, with only the given objects around."""
    s = WorldState(
        t=0.0,
        ego=np.array([0.0, -1.75, 0.0, 5.0, 0.0, 0.0, 0.0], np.float32),
        ego_size=(4.5, 1.8),
        vehicles=empty(6),
        vehicle_kind=np.zeros(0, np.int8),
        vehicle_ids=[],
        pedestrians=empty(4),
        pedestrian_intent=np.zeros(0, np.int8),
        pedestrian_ids=[],
        light_pos=empty(2),
        light_yaw=np.zeros(0, np.float32),
        light_state=np.zeros(0, np.int8),
        light_stop_line=np.zeros((0, 2, 2), np.float32),
        sign_pos=empty(2),
        sign_yaw=np.zeros(0, np.float32),
        sign_kind=np.zeros(0, np.int8),
        sign_value=np.zeros(0, np.float32),
        sign_stop_line=np.zeros((0, 2, 2), np.float32),
        route=np.array([[0.0, -1.75], [50.0, -1.75]], np.float32),
        speed_limit=13.9,
        command="follow",
    )
    for name, value in arrays.items():
        setattr(s, name, value)
    if "vehicles" in arrays:
        s.vehicle_kind = np.full(len(s.vehicles), CAR, np.int8)
        s.vehicle_ids = [f"v{i}" for i in range(len(s.vehicles))]
    if "pedestrians" in arrays:
        s.pedestrian_intent = np.full(len(s.pedestrians), WAIT, np.int8)
        s.pedestrian_ids = [f"p{i}" for i in range(len(s.pedestrians))]
    return s


def car_at(x: float, y: float = -1.75) -> np.ndarray:
    return np.array([[x, y, 0.0, 0.0, 4.5, 1.8]], np.float32)


def light_ahead(state: int, yaw: float = np.pi) -> WorldState:
    """A light 25 m ahead on the right kerb; yaw pi faces the ego."""
    return lone_ego(
        light_pos=np.array([[25.0, -4.5]], np.float32),
        light_yaw=np.array([yaw], np.float32),
        light_state=np.array([state], np.int8),
        light_stop_line=np.array([[[24.0, -3.5], [24.0, 0.0]]], np.float32),
    )


def test_shapes_and_dtypes():
    road, state = synthetic_scene(0)
    img = FrontCamera().render(state, road)
    assert img.shape == (128, 256, 3) and img.dtype == np.uint8
    raster = BevRenderer().render(state, road)
    assert raster.shape == (len(BEV_CHANNELS), 128, 128) and raster.dtype == np.uint8
    assert set(np.unique(raster)) <= {0, 1}
    assert bev_to_rgb(raster).shape == (128, 128, 3)


def test_deterministic_and_never_writes_to_inputs():
    road, state = synthetic_scene(1)
    before_state, before_road = copy.deepcopy(state), copy.deepcopy(road)
    a, b = FrontCamera().render(state, road), FrontCamera().render(state, road)
    assert np.array_equal(a, b)
    assert np.array_equal(BevRenderer().render(state, road), BevRenderer().render(state, road))
    for name, value in vars(before_state).items():
        assert np.array_equal(np.asarray(getattr(state, name)), np.asarray(value)), name
    assert all(np.array_equal(p, q) for p, q in zip(road.drivable, before_road.drivable, strict=True))


def test_light_colour_shows_only_from_the_front():
    road, cam = straight_road(), FrontCamera()
    red, green = cam.render(light_ahead(RED), road).astype(int), cam.render(light_ahead(GREEN), road).astype(int)
    lamp = (red != green).any(axis=2)
    assert lamp.any() and np.argwhere(lamp)[:, 0].max() < 64  # the lamp head is above the horizon
    reddish = (red[..., 0] > 150) & (red[..., 1] < 100)
    greenish = (green[..., 1] > 150) & (green[..., 0] < 100)
    assert (reddish & lamp).sum() >= 2 and not ((red[..., 1] > 150) & (red[..., 0] < 100) & lamp).any()
    assert (greenish & lamp).sum() >= 2 and not ((green[..., 0] > 150) & (green[..., 1] < 100) & lamp).any()
    back_red, back_green = cam.render(light_ahead(RED, 0.0), road), cam.render(light_ahead(GREEN, 0.0), road)
    assert np.array_equal(back_red, back_green)


def test_vehicle_ahead_changes_the_centre_and_one_behind_changes_nothing():
    road, cam = straight_road(), FrontCamera()
    empty_view = cam.render(lone_ego(), road)
    ahead = cam.render(lone_ego(vehicles=car_at(15.0)), road)
    assert (ahead[50:70, 118:138] != empty_view[50:70, 118:138]).any(axis=2).mean() > 0.3
    assert np.array_equal(cam.render(lone_ego(vehicles=car_at(-10.0)), road), empty_view)


def test_ground_passing_behind_the_camera_is_clipped():
    cam = FrontCamera()
    img = cam.render(lone_ego(), straight_road(x0=-60.0))
    assert tuple(img[-1, 128]) == ROAD_RGB
    assert np.array_equal(img[:40], cam.background[:40])  # nothing folded over into the sky
    front_only = cam.render(lone_ego(), straight_road(x0=2.0))  # the same road, starting just out of view
    assert (img[70:] != front_only[70:]).any(axis=2).mean() < 0.01


def test_pedestrian_intent_is_not_drawn_but_heading_is():
    road, cam = straight_road(), FrontCamera()
    ped = lone_ego(pedestrians=np.array([[10.0, -4.5, np.pi / 2, 0.0]], np.float32))
    crossing = copy.copy(ped)
    crossing.pedestrian_intent = np.array([CROSS], np.int8)
    assert np.array_equal(cam.render(ped, road), cam.render(crossing, road))
    facing = copy.copy(ped)
    facing.pedestrians = np.array([[10.0, -4.5, np.pi, 0.0]], np.float32)
    away = copy.copy(ped)
    away.pedestrians = np.array([[10.0, -4.5, 0.0, 0.0]], np.float32)
    assert not np.array_equal(cam.render(facing, road), cam.render(away, road))


@pytest.mark.parametrize("yaw", [0.0, 1.0, -2.5])
def test_bev_is_ego_centric(yaw: float):
    """A car 10 m ahead of the ego lands 10 m / 0.5 m = 20 px above the ego's fixed pixel, whatever the heading."""
    bev = BevRenderer()
    ego = np.array([30.0, -20.0, yaw, 0.0, 0.0, 0.0, 0.0], np.float32)
    ahead = ego[:2] + 10.0 * np.array([np.cos(yaw), np.sin(yaw)])
    state = lone_ego(ego=ego, vehicles=np.array([[*ahead, yaw, 0.0, 4.5, 1.8]], np.float32))
    raster = bev.render(state, straight_road())
    row, col = bev.ego_pixel
    assert raster[CH["ego"], row, col] == 1 and raster[CH["ego"]].sum() < 60
    assert raster[CH["vehicles"], row - 20, col] == 1
    assert raster[CH["vehicles"], row, col] == 0 and raster[CH["vehicles"], row + 20, col] == 0


def test_bev_light_channel_follows_the_light_state():
    bev = BevRenderer()
    for state, lit in ((RED, "light_red"), (GREEN, "light_green")):
        raster = bev.render(light_ahead(state), straight_road())
        row, col = bev.ego_pixel
        assert raster[CH[lit], row - 48, col] == 1  # the stop line, 24 m ahead
        others = [CH[c] for c in ("light_green", "light_yellow", "light_red") if c != lit]
        assert raster[others].sum() == 0


def _ear_clip_reference(p: np.ndarray) -> np.ndarray:
    """The plain ear clipping `_ear_clip` must reproduce exactly (cached tiles, hence pixels, depend on it): every
    step retests every candidate ear against every remaining vertex."""
    ring, tris = np.arange(len(p)), []
    while len(ring) > 3:
        a, b, c = p[np.roll(ring, 1)], p[ring], p[np.roll(ring, -1)]
        q = p[ring][None]
        inside = (_cross(a[:, None], b[:, None], q) > 1e-9) & (_cross(b[:, None], c[:, None], q) > 1e-9)
        inside &= _cross(c[:, None], a[:, None], q) > 1e-9
        convex = _cross(a, b, c)
        ear = (convex > 1e-12) & ~inside.any(axis=1)
        cost = np.where(ear, np.linalg.norm(c - a, axis=1), np.inf)
        k = int(np.argmin(cost)) if ear.any() else int(np.argmax(convex))
        tris.append((ring[k - 1], ring[k], ring[(k + 1) % len(ring)]))
        ring = np.delete(ring, k)
    tris.append(tuple(ring))
    return np.array(tris)


def test_ear_clip_matches_the_reference():
    rng = np.random.default_rng(0)
    for m in (3, 4, 5, 9, 17, 40, 64):
        for _ in range(10):
            angle = np.sort(rng.uniform(0, 2 * np.pi, m))
            poly = rng.uniform(1, 30, m)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
            if rng.random() < 0.5:
                poly = np.round(poly)  # collinear runs and ties
            p = _clean(poly)
            if len(p) >= 3:
                assert np.array_equal(_ear_clip(p), _ear_clip_reference(p))


def test_geometry_from_the_disk_cache_draws_the_same_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLDDRIVE_CACHE", str(tmp_path))
    road, state = synthetic_scene(2)
    road.name = "synthetic.net.xml"  # named maps (read from a network file) are cached on disk
    cam, bev = FrontCamera(), BevRenderer()
    fresh = cam.render(state, road), bev.render(state, road)
    assert len(list(tmp_path.rglob("geometry_*.npz"))) == 1
    loaded_road = copy.deepcopy(road)  # another map object with the same arrays: its geometry comes from the file
    monkeypatch.setattr(camera, "_build_geometry", lambda road: pytest.fail("geometry rebuilt, not loaded"))
    loaded = cam.render(state, loaded_road), bev.render(state, loaded_road)
    assert all(np.array_equal(a, b) for a, b in zip(fresh, loaded, strict=True))
