"""Scenario families: each turns (family, seed) into a reproducible `WorldSpec` — layout, ego route, traffic, people.

Each family is a small class with a `default_config()` merged with the user's overrides (HighwayEnv style). The
layout comes from one of `layout_variants` seeded networks (so netconvert runs once per variant, not per episode);
everything else — route choice, traffic, pedestrians, rude drivers, light phase — comes from the episode seed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from worlddrive.sim import network as nw
from worlddrive.sim.route import RoutePath, build_route
from worlddrive.sim.state import CROSS, WAIT
from worlddrive.sim.world import RudeDriver, ScriptedPedestrian, TrafficSpec, WorldSpec


@lru_cache(maxsize=64)
def load_network(path: Path) -> nw.Network:
    return nw.read_network(path)


class Family:
    """Base class: subclasses set `name`, write `layout()` and `populate()`."""

    name: ClassVar[str] = ""
    heldout: ClassVar[bool] = False
    hard: ClassVar[bool] = False

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "duration_s": 25.0,
            "layout_variants": 8,
            "vehicles": 14,
            "walkers": 8,
            "ego_speed": (8.0, 12.0),
            "rude_prob": 0.3,
        }

    def __init__(self, config: dict[str, Any] | None = None):
        defaults = self.default_config()
        unknown = set(config or {}) - set(defaults)
        if unknown:
            raise KeyError(
                f"unknown config keys for family {self.name!r}: {sorted(unknown)}; valid keys: {sorted(defaults)}"
            )
        self.config = {**defaults, **(config or {})}

    def layout(self, rng: np.random.Generator) -> nw.PlainNet:
        raise NotImplementedError

    def network(self, seed: int) -> nw.Network:
        variant = seed % int(self.config["layout_variants"])
        rng = np.random.default_rng([hash_name(self.name), variant])
        return load_network(nw.build(self.layout(rng), f"{self.name}{variant}"))

    def make(self, seed: int) -> WorldSpec:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        net = self.network(seed)
        rng = np.random.default_rng([hash_name(self.name), seed, 1])
        spec = self.populate(net, rng, seed)
        return spec

    def populate(self, net: nw.Network, rng: np.random.Generator, seed: int) -> WorldSpec:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared pieces

    def base_spec(
        self, net: nw.Network, route: RoutePath, rng: np.random.Generator, seed: int, start_s: float
    ) -> WorldSpec:
        lo, hi = self.config["ego_speed"]
        return WorldSpec(
            network=net,
            route=route,
            seed=seed,
            ego_start_s=start_s,
            ego_speed=float(rng.uniform(lo, hi)),
            duration_s=float(self.config["duration_s"]),
            traffic=random_traffic(net, rng, int(self.config["vehicles"]), avoid=route, start_s=start_s),
            walker_routes=random_walkers(net, rng, int(self.config["walkers"])),
            light_phase_offset=float(rng.uniform(0, 200)),
        )


def hash_name(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % 2**31


def car_edges(net: nw.Network) -> list:
    return [e for e in net.net.getEdges() if e.getFunction() == "" and e.allows("passenger")]


def random_traffic(
    net: nw.Network, rng: np.random.Generator, n: int, avoid: RoutePath, start_s: float
) -> list[TrafficSpec]:
    """Vehicles on random shortest-path routes; most start at once spread over the map, the rest trickle in."""
    edges = car_edges(net)
    out: list[TrafficSpec] = []
    tries = 0
    while len(out) < n and tries < n * 20:
        tries += 1
        a, b = rng.choice(len(edges), 2, replace=False)
        path, _ = net.net.getShortestPath(edges[a], edges[b], vClass="passenger")
        if not path or len(path) < 1:
            continue
        depart = 0.0 if rng.random() < 0.7 else float(rng.uniform(0, 15))
        pos_len = edges[a].getLength()
        pos = float(rng.uniform(0, max(pos_len - 10, 1)))
        if edges[a].getID() == avoid.edges[0] and abs(pos - start_s) < 25:
            continue  # do not spawn on top of the ego
        vtype = "truck" if rng.random() < 0.12 else "car"
        out.append(TrafficSpec([e.getID() for e in path], vtype, depart, f"{pos:.1f}" if depart == 0 else "base"))
    return out


def random_walkers(net: nw.Network, rng: np.random.Generator, n: int) -> list[tuple[str, str, float, float]]:
    walk = [e for e in net.net.getEdges() if e.getFunction() == "" and e.allows("pedestrian")]
    if len(walk) < 2:
        return []
    out = []
    for _ in range(n):
        a, b = rng.choice(len(walk), 2, replace=False)
        depart = 0.0 if rng.random() < 0.6 else float(rng.uniform(0, 15))
        out.append((walk[a].getID(), walk[b].getID(), depart, float(rng.uniform(0, walk[a].getLength()))))
    return out


def road_sides(net: nw.Network, route: RoutePath, s: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """At route arc length s: the point, the unit normal to the right, and distances to the right and left road
    edges (both directions of a two-way road)."""
    i = int(np.clip(np.searchsorted(route.s, s), 0, len(route.s) - 1))
    p = route.xy[i]
    yaw = route.yaw[i]
    right = np.array([np.sin(yaw), -np.cos(yaw)])
    lane = net.net.getLane(route.lane[i])
    edge = lane.getEdge()
    car = [ln for ln in edge.getLanes() if ln.allows("passenger")]
    width = {ln.getID(): ln.getWidth() for ln in car}
    d_right = sum(width[ln.getID()] for ln in car if ln.getIndex() < lane.getIndex()) + lane.getWidth() / 2
    d_left = sum(width.values()) - d_right
    back = [e for e in edge.getToNode().getOutgoing() if e.getToNode() == edge.getFromNode()]
    if back:
        d_left += sum(ln.getWidth() for ln in back[0].getLanes() if ln.allows("passenger"))
    return p, right, d_right, d_left


def crossing_pedestrian(
    net: nw.Network,
    route: RoutePath,
    s: float,
    rng: np.random.Generator,
    intent: int,
    trigger_s: float,
    from_right: bool = True,
) -> ScriptedPedestrian:
    """A pedestrian who walks along the sidewalk to the curb at route arc length s, then crosses (or waits)."""
    p, right, d_right, d_left = road_sides(net, route, s)
    side = right if from_right else -right
    d_near, d_far = (d_right, d_left) if from_right else (d_left, d_right)
    along = np.array([-right[1], right[0]]) * (1 if rng.random() < 0.5 else -1)
    curb = p + side * (d_near + 0.8)
    start = curb - along * rng.uniform(5, 10) + side * 0.7
    far = p - side * (d_far + 0.8)
    path = np.stack([start, curb, far, far + along * 6.0])
    return ScriptedPedestrian(
        path=path, curb_index=1, intent=intent, cross_at_s=s, trigger_s=trigger_s, speed=float(rng.uniform(1.1, 1.6))
    )


def parked_car(net: nw.Network, route: RoutePath, s: float, truck: bool = False) -> np.ndarray:
    """A parked vehicle along the right curb at route arc length s, just off the drivable area."""
    p, right, d_right, _ = road_sides(net, route, s)
    length, width = (8.5, 2.5) if truck else (4.5, 1.85)
    c = p + right * (d_right + width / 2 + 0.15)
    yaw = np.arctan2(-right[0], right[1])
    return np.array([c[0], c[1], yaw, 0.0, length, width], np.float32)


# ---------------------------------------------------------------------- families


class Straight(Family):
    name = "straight"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {**super().default_config(), "vehicles": 18, "walkers": 4, "ego_speed": (10.0, 15.0)}

    def layout(self, rng):
        return nw.corridor(rng)

    def populate(self, net, rng, seed):
        route = build_route(net, ["n0_n1", "n1_n2", "n2_n3"], start_lane=int(rng.integers(0, 3)))
        spec = self.base_spec(net, route, rng, seed, start_s=10.0)
        add_rude_traffic(spec, net, route, rng, self.config["rude_prob"])
        return spec


class CutIn(Straight):
    name = "cut_in"
    hard = True

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {**super().default_config(), "rude_prob": 1.0}

    def populate(self, net, rng, seed):
        route = build_route(net, ["n0_n1", "n1_n2", "n2_n3"], start_lane=int(rng.integers(0, 2)))
        spec = self.base_spec(net, route, rng, seed, start_s=10.0)
        lane = net.net.getLane(route.lane[0])
        target = lane.getIndex() + 1 if lane.getIndex() + 1 < len(lane.getEdge().getLanes()) else lane.getIndex() - 1
        speed = spec.ego_speed + rng.uniform(3, 6)
        spec.traffic.append(
            TrafficSpec([*route.edges], "rude", 0.0, f"{rng.uniform(0, 6):.1f}", target, f"{speed:.1f}")
        )
        spec.rude.append(
            RudeDriver(
                f"v{len(spec.traffic) - 1}", "cut_in", target_lane=lane.getIndex(), trigger_gap=float(rng.uniform(3, 9))
            )
        )
        return spec


class IntersectionSignal(Family):
    name = "intersection_signal"
    junction = "traffic_light"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        # junction_gap: metres from the ego's start to the junction (a short one with a low ego_speed starts the
        # car slow near the stop line, a state a cloned policy reaches by braking too early)
        return {**super().default_config(), "walkers": 14, "red_runner_prob": 0.08, "junction_gap": (45.0, 80.0)}

    def layout(self, rng):
        return nw.cross4(rng, self.junction)

    def ego_route(self, net, rng) -> RoutePath:
        dst = str(rng.choice(["c_e", "c_n", "c_s"], p=[0.5, 0.25, 0.25]))
        return build_route(net, ["w_c", dst], start_lane=int(rng.integers(0, 2)))

    def populate(self, net, rng, seed):
        route = self.ego_route(net, rng)
        junction_s = float(route.turn_s[0])
        gap = rng.uniform(*self.config["junction_gap"])
        spec = self.base_spec(net, route, rng, seed, start_s=max(junction_s - gap, 0.0))
        if rng.random() < self.config.get("red_runner_prob", 0.0):
            runner = [t for t in range(len(spec.traffic)) if spec.traffic[t].edges[0] in ("s_c", "n_c")]
            if runner:
                spec.rude.append(RudeDriver(f"v{runner[0]}", "red_runner"))
        return spec


class IntersectionStop(IntersectionSignal):
    name = "intersection_stop"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {**super().default_config(), "red_runner_prob": 0.0, "vehicles": 10}

    def layout(self, rng):
        return nw.cross4(rng, "allway_stop" if rng.random() < 0.6 else "priority_stop")

    def ego_route(self, net, rng):
        dst = str(rng.choice(["c_n", "c_e", "w_c"], p=[0.5, 0.25, 0.25]))
        edges = ["s_c", dst] if dst != "w_c" else ["s_c", "c_w"]  # from the minor road: stop signs on our approach
        return build_route(net, edges, start_lane=0)


class YellowLight(IntersectionSignal):
    name = "yellow_light"
    hard = True

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {**super().default_config(), "ego_speed": (10.0, 13.0), "red_runner_prob": 0.0}

    def ego_route(self, net, rng):
        return build_route(net, ["w_c", "c_e"], start_lane=int(rng.integers(0, 2)))

    def populate(self, net, rng, seed):
        spec = super().populate(net, rng, seed)
        spec.yellow_trigger_s = float(rng.uniform(12, 45))
        return spec


class Crosswalk(Family):
    name = "crosswalk"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {**super().default_config(), "walkers": 10, "vehicles": 10, "scripted": (1, 3), "parked": (1, 4)}

    def layout(self, rng):
        return nw.midblock(rng)

    def populate(self, net, rng, seed):
        route = build_route(net, ["a_x", "x_b"], start_lane=0)
        spec = self.base_spec(net, route, rng, seed, start_s=float(rng.uniform(5, 40)))
        spec.walker_routes += [
            ("a_x", "x_a", float(rng.uniform(0, 12)), float(rng.uniform(0, 40))) for _ in range(int(rng.integers(1, 4)))
        ]
        lo, hi = self.config["scripted"]
        for _ in range(int(rng.integers(lo, hi + 1))):
            s = float(rng.uniform(spec.ego_start_s + 50, route.length - 40))
            intent = CROSS if rng.random() < 0.6 else WAIT
            spec.scripted_pedestrians.append(
                crossing_pedestrian(
                    net,
                    route,
                    s,
                    rng,
                    intent,
                    trigger_s=float(rng.uniform(25, 50)),
                    from_right=bool(rng.random() < 0.6),
                )
            )
        lo, hi = self.config["parked"]
        parked = [
            parked_car(net, route, float(rng.uniform(spec.ego_start_s + 20, route.length - 20)))
            for _ in range(int(rng.integers(lo, hi + 1)))
        ]
        spec.parked = np.stack(parked) if parked else spec.parked
        return spec


class OccludedPedestrian(Crosswalk):
    name = "occluded_pedestrian"
    hard = True

    def populate(self, net, rng, seed):
        route = build_route(net, ["a_x", "x_b"], start_lane=0)
        spec = self.base_spec(net, route, rng, seed, start_s=float(rng.uniform(5, 20)))
        s = float(rng.uniform(spec.ego_start_s + 70, min(spec.ego_start_s + 120, route.length - 30)))
        truck = parked_car(net, route, s - 6.5, truck=True)
        spec.parked = truck[None]
        ped = crossing_pedestrian(net, route, s, rng, CROSS, trigger_s=float(rng.uniform(22, 35)), from_right=True)
        # Hidden behind the truck: start on the truck's far side (downstream) and walk back to the curb.
        p, right, d_right, _ = road_sides(net, route, s)
        along = np.array([-right[1], right[0]])
        ped.path[0] = p + right * (d_right + 1.5) - along * 4.0
        spec.scripted_pedestrians.append(ped)
        return spec


class UrbanMixed(Family):
    name = "urban_mixed"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {**super().default_config(), "duration_s": 45.0, "vehicles": 26, "walkers": 24, "min_route_m": 300.0}

    def layout(self, rng):
        return nw.grid(rng)

    def populate(self, net, rng, seed):
        route = random_route(net, rng, float(self.config["min_route_m"]))
        spec = self.base_spec(net, route, rng, seed, start_s=5.0)
        for _ in range(int(rng.integers(0, 3))):
            s = float(rng.uniform(60, route.length - 30))
            if not _near_junction(route, s):
                intent = CROSS if rng.random() < 0.5 else WAIT
                spec.scripted_pedestrians.append(
                    crossing_pedestrian(net, route, s, rng, intent, trigger_s=float(rng.uniform(25, 45)))
                )
        return spec


class HeldoutCity(Family):
    """A real city network (Braunschweig, shipped with SUMO): lane widths, block sizes and junction shapes that no
    training layout has. Never used for training."""

    name = "heldout_city"
    heldout = True

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            **super().default_config(),
            "duration_s": 40.0,
            "vehicles": 24,
            "walkers": 20,
            "min_route_m": 250.0,
            "layout_variants": 1,
        }

    def network(self, seed):
        return load_network(nw.HELDOUT_CITY_NET)

    def populate(self, net, rng, seed):
        route = random_route(net, rng, float(self.config["min_route_m"]))
        return self.base_spec(net, route, rng, seed, start_s=5.0)


def random_route(net: nw.Network, rng: np.random.Generator, min_length: float) -> RoutePath:
    """A shortest path between two random edges, at least `min_length` metres long."""
    edges = [e for e in car_edges(net) if e.getLength() > 20]
    best = None
    for _ in range(400):
        a, b = rng.choice(len(edges), 2, replace=False)
        path, _cost = net.net.getShortestPath(edges[a], edges[b], vClass="passenger")
        if not path:
            continue
        length = sum(e.getLength() for e in path)
        if length >= min_length:
            try:
                return build_route(net, [e.getID() for e in path], start_lane=0)
            except ValueError:
                continue
        if best is None or length > best[1]:
            best = (path, length)
    if best is None:
        raise RuntimeError(f"no drivable route found in {net.path.name}")
    return build_route(net, [e.getID() for e in best[0]], start_lane=0)


def _near_junction(route: RoutePath, s: float, margin: float = 25.0) -> bool:
    return bool(np.any(np.abs(route.turn_s - s) < margin)) or s < 20


def add_rude_traffic(spec: WorldSpec, net: nw.Network, route: RoutePath, rng: np.random.Generator, prob: float) -> None:
    """Sometimes a leader in the ego lane that brakes late and hard."""
    if rng.random() >= prob:
        return
    lane = net.net.getLane(route.lane[0]).getIndex()
    ahead = spec.ego_start_s + float(rng.uniform(25, 45))
    spec.traffic.append(TrafficSpec([*route.edges], "rude", 0.0, f"{ahead:.1f}", lane, f"{spec.ego_speed:.1f}"))
    spec.rude.append(RudeDriver(f"v{len(spec.traffic) - 1}", "late_brake", trigger_gap=float(rng.uniform(10, 20))))


FAMILIES: dict[str, type[Family]] = {
    cls.name: cls
    for cls in (
        Straight,
        IntersectionSignal,
        IntersectionStop,
        Crosswalk,
        UrbanMixed,
        OccludedPedestrian,
        YellowLight,
        CutIn,
        HeldoutCity,
    )
}
TRAIN_FAMILIES = [n for n, c in FAMILIES.items() if not c.heldout]
HARD_FAMILIES = [n for n, c in FAMILIES.items() if c.hard]
HELDOUT_FAMILIES = [n for n, c in FAMILIES.items() if c.heldout]


def make_family(name: str, config: dict[str, Any] | None = None) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown scenario family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name](config)


def make_spec(family: str, seed: int, config: dict[str, Any] | None = None) -> WorldSpec:
    return make_family(family, config).make(seed)
