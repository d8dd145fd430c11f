"""Road layouts: generated SUMO networks (plain XML -> netconvert) and their geometry as a `RoadMap`.

SUMO owns the topology (lanes, junctions, crosswalks, light programs, right of way); this module only writes the
plain node/edge files for each layout family, runs `netconvert`, caches the result by its parameters, and reads the
geometry back with sumolib into arrays the renderers and the expert use.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sumo
import sumolib

from worlddrive.sim.state import DASHED_WHITE, SOLID_WHITE, SOLID_YELLOW, SPEED_SIGN, STOP_SIGN, YIELD_SIGN, RoadMap

SUMO_HOME = Path(sumo.SUMO_HOME)
NETCONVERT = str(SUMO_HOME / "bin" / "netconvert")
HELDOUT_CITY_NET = SUMO_HOME / "tools" / "game" / "fokr_bs_demo" / "fokr_bs.net.xml.gz"

# netconvert options every generated layout shares: realistic light timings, sidewalks and crosswalks.
NETCONVERT_OPTIONS = [
    "--no-turnarounds",
    "true",
    "--walkingareas",
    "true",
    "--offset.disable-normalization",
    "true",
    "--tls.green.time",
    "22",
    "--tls.yellow.time",
    "4",
    "--tls.allred.time",
    "1",
    "--junctions.corner-detail",
    "5",
    "--default.junctions.radius",
    "6",
    "--no-warnings",
    "true",
]


def cache_dir() -> Path:
    root = Path(os.environ.get("WORLDDRIVE_CACHE", Path.home() / ".cache" / "worlddrive")) / "nets"
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass
class PlainNet:
    """A layout in SUMO's plain format before netconvert."""

    nodes: list[dict] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)
    crossings: list[dict] = field(default_factory=list)
    guess_crossings: bool = True

    def node(self, id: str, x: float, y: float, type: str = "priority") -> None:
        self.nodes.append(dict(id=id, x=f"{x:.2f}", y=f"{y:.2f}", type=type))

    def road(
        self,
        a: str,
        b: str,
        lanes: int,
        speed: float,
        shape: list[tuple[float, float]] | None = None,
        back_lanes: int | None = None,
        sidewalk: float = 2.5,
        lane_width: float = 3.3,
    ) -> None:
        """A two-way road a <-> b (edge ids 'a_b' and 'b_a')."""
        for src, dst, n, pts in ((a, b, lanes, shape), (b, a, back_lanes or lanes, shape[::-1] if shape else None)):
            e = dict(
                id=f"{src}_{dst}",
                **{"from": src},
                to=dst,
                numLanes=str(n),
                speed=f"{speed:.2f}",
                sidewalkWidth=f"{sidewalk}",
                width=f"{lane_width}",
                spreadType="right",
            )
            if pts:
                e["shape"] = " ".join(f"{x:.2f},{y:.2f}" for x, y in pts)
            self.edges.append(e)

    def xml(self) -> tuple[str, str, str]:
        def tags(name: str, items: list[dict]) -> str:
            return "\n".join(f"  <{name} " + " ".join(f'{k}="{v}"' for k, v in it.items()) + "/>" for it in items)

        return (
            f"<nodes>\n{tags('node', self.nodes)}\n</nodes>\n",
            f"<edges>\n{tags('edge', self.edges)}\n</edges>\n",
            f"<connections>\n{tags('crossing', self.crossings)}\n</connections>\n",
        )


def build(plain: PlainNet, name: str) -> Path:
    """Run netconvert once per distinct layout; later calls return the cached file (written atomically)."""
    nod, edg, con = plain.xml()
    key = hashlib.sha1((nod + edg + con + str(plain.guess_crossings) + " ".join(NETCONVERT_OPTIONS)).encode())
    out = cache_dir() / f"{name}_{key.hexdigest()[:12]}.net.xml"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        files = {"nod": nod, "edg": edg, "con": con}
        for ext, text in files.items():
            Path(tmp, f"n.{ext}.xml").write_text(text)
        tmp_out = Path(tmp, "net.net.xml")
        cmd = [
            NETCONVERT,
            "-n",
            f"{tmp}/n.nod.xml",
            "-e",
            f"{tmp}/n.edg.xml",
            "-x",
            f"{tmp}/n.con.xml",
            "-o",
            str(tmp_out),
            *NETCONVERT_OPTIONS,
        ]
        if plain.guess_crossings:
            cmd += ["--crossings.guess", "true"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"netconvert failed for layout {name}: {res.stderr.strip()[:2000]}")
        fd, partial = tempfile.mkstemp(dir=out.parent, suffix=".partial")
        os.close(fd)
        Path(partial).write_bytes(tmp_out.read_bytes())
        os.replace(partial, out)
    return out


# ---------------------------------------------------------------- layout families (seeded generators of PlainNet)


def corridor(rng: np.random.Generator) -> PlainNet:
    """A long multi-lane road with gentle curves and speed-limit zones (no junctions)."""
    p = PlainNet(guess_crossings=False)
    lanes = int(rng.integers(2, 4))
    xs = np.cumsum([0.0, *rng.uniform(180, 260, size=3)])
    bend = rng.uniform(-25, 25, size=3)
    speeds = rng.choice([13.89, 16.67, 22.22], size=3)
    for i, x in enumerate(xs):
        p.node(f"n{i}", float(x), 0.0 if i in (0, len(xs) - 1) else float(bend[i - 1] * 0.3))
    for i in range(3):
        (x0, x1) = xs[i], xs[i + 1]
        y0 = 0.0 if i == 0 else bend[i - 1] * 0.3
        y1 = 0.0 if i == 2 else bend[i] * 0.3
        mid = ((x0 + x1) / 2, (y0 + y1) / 2 + bend[i])
        shape = [(x0, y0), mid, (x1, y1)]
        p.road(f"n{i}", f"n{i + 1}", lanes, float(speeds[i]), shape=_smooth(shape))
    return p


def midblock(rng: np.random.Generator) -> PlainNet:
    """A street with a zebra crossing in the middle of the block, where pedestrians have priority."""
    p = PlainNet(guess_crossings=False)
    lanes = int(rng.integers(1, 3))
    half = rng.uniform(150, 220)
    p.node("a", -half, 0.0)
    p.node("x", 0.0, 0.0)
    p.node("b", half, 0.0)
    speed = float(rng.choice([11.11, 13.89]))
    p.road("a", "x", lanes, speed)
    p.road("x", "b", lanes, speed)
    p.crossings.append(dict(node="x", edges="a_x x_a", priority="true", width="4"))
    return p


def cross4(rng: np.random.Generator, junction: str) -> PlainNet:
    """A four-way junction: `traffic_light`, `allway_stop` or `priority_stop` (stop signs on the minor road)."""
    p = PlainNet()
    arm = rng.uniform(110, 160, size=4)
    major = int(rng.integers(1, 3))
    minor = major if junction != "priority_stop" else 1
    skew = rng.uniform(-6, 6)
    p.node("c", 0.0, 0.0, junction)
    pts = {"e": (arm[0], skew), "n": (skew, arm[1]), "w": (-arm[2], -skew), "s": (-skew, -arm[3])}
    for k, (x, y) in pts.items():
        p.node(k, float(x), float(y))
    speed = float(rng.choice([11.11, 13.89]))
    p.road("w", "c", major, speed)
    p.road("c", "e", major, speed)
    p.road("s", "c", minor, speed)
    p.road("c", "n", minor, speed)
    return p


def grid(rng: np.random.Generator) -> PlainNet:
    """A 3x3 block grid mixing lights, all-way stops and priority junctions."""
    p = PlainNet()
    block = rng.uniform(90, 130)
    kinds = ["traffic_light", "allway_stop", "priority_stop", "priority"]
    for i in range(4):
        for j in range(4):
            inner = 0 < i < 3 and 0 < j < 3
            kind = str(rng.choice(kinds, p=[0.45, 0.3, 0.15, 0.1])) if inner else "priority"
            p.node(f"g{i}{j}", i * block, j * block, kind)
    speed = float(rng.choice([11.11, 13.89]))
    for i in range(4):
        for j in range(4):
            if i < 3 and 0 < j < 3:
                p.road(f"g{i}{j}", f"g{i + 1}{j}", int(rng.integers(1, 3)), speed)
            if j < 3 and 0 < i < 3:
                p.road(f"g{i}{j}", f"g{i}{j + 1}", int(rng.integers(1, 3)), speed)
    return p


def _smooth(points: list[tuple[float, float]], n: int = 16) -> list[tuple[float, float]]:
    """Quadratic Bezier through three control points, so curves look like curves to the camera."""
    (x0, y0), (x1, y1), (x2, y2) = points
    t = np.linspace(0, 1, n)
    x = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * x1 + t**2 * x2
    y = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * y1 + t**2 * y2
    return list(zip(x.tolist(), y.tolist(), strict=True))


# ---------------------------------------------------------------- reading a network


@dataclass
class LightGroup:
    """One traffic light as drawn and scored: the lanes it governs share a stop line, a pole and a link state."""

    tls_id: str
    link_index: int
    lane_id: str
    pos: np.ndarray  # (2,)
    yaw: float
    stop_line: np.ndarray  # (2, 2)


@dataclass
class Network:
    """A SUMO network plus the derived geometry and semantic objects (lights, signs) of our world."""

    path: Path
    net: sumolib.net.Net
    road: RoadMap
    lights: list[LightGroup]
    sign_pos: np.ndarray
    sign_yaw: np.ndarray
    sign_kind: np.ndarray
    sign_value: np.ndarray
    sign_stop_line: np.ndarray
    sign_lane: list[str]


def offset_polyline(pts: np.ndarray, d: float) -> np.ndarray:
    """Shift a polyline (K, 2) sideways by d metres (positive = left of its direction)."""
    seg = np.diff(pts, axis=0)
    seg /= np.maximum(np.linalg.norm(seg, axis=1, keepdims=True), 1e-6)
    tang = np.concatenate([seg[:1], seg[:-1] + seg[1:], seg[-1:]])
    tang /= np.maximum(np.linalg.norm(tang, axis=1, keepdims=True), 1e-6)
    normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    return pts + d * normal


def strip(pts: np.ndarray, width: float) -> np.ndarray:
    """Polygon (2K, 2) of a band of `width` around a centreline."""
    return np.concatenate([offset_polyline(pts, width / 2), offset_polyline(pts, -width / 2)[::-1]]).astype(np.float32)


def read_network(path: Path) -> Network:
    """Read a .net.xml(.gz) into geometry arrays: drivable area, sidewalks, crosswalks, markings, lights, signs."""
    net = sumolib.net.readNet(str(path), withInternal=True, withPedestrianConnections=True)
    drivable, sidewalks, crosswalks, markings, kinds, stop_lines = [], [], [], [], [], []
    centers, widths, speeds = {}, {}, {}
    for edge in net.getEdges(withInternal=True):
        fn = edge.getFunction()
        for lane in edge.getLanes():
            shape = np.asarray(lane.getShape(), np.float32)
            if len(shape) < 2:
                continue
            w = lane.getWidth()
            if fn == "crossing":
                crosswalks.append(strip(shape, w))
            elif fn == "walkingarea":
                if len(shape) >= 3:
                    sidewalks.append(shape)
            elif lane.getPermissions() == {"pedestrian"}:
                sidewalks.append(strip(shape, w))
            elif not lane.allows("passenger"):
                drivable.append(strip(shape, w + 0.1))  # bike lanes and kerb strips: road surface, not a car lane
            else:
                drivable.append(strip(shape, w + 0.1))
                centers[lane.getID()] = shape
                widths[lane.getID()] = w
                speeds[lane.getID()] = lane.getSpeed()
        if fn == "":
            car_lanes = [ln for ln in edge.getLanes() if ln.allows("passenger")]
            for k, lane in enumerate(car_lanes):
                shape = np.asarray(lane.getShape(), np.float32)
                if len(shape) < 2:
                    continue
                half = lane.getWidth() / 2
                if k == 0:
                    markings.append(offset_polyline(shape, -half + 0.3))
                    kinds.append(SOLID_WHITE)
                left = offset_polyline(shape, half)
                if k == len(car_lanes) - 1:
                    two_way = any(e.getToNode() == edge.getFromNode() for e in edge.getToNode().getOutgoing())
                    markings.append(left)
                    kinds.append(SOLID_YELLOW if two_way else SOLID_WHITE)
                else:
                    markings.append(left)
                    kinds.append(DASHED_WHITE)
    for node in net.getNodes():
        shape = np.asarray(node.getShape(), np.float32)
        if len(shape) >= 3 and node.getType() not in ("dead_end",):
            drivable.append(shape)
    lights, signs = [], []
    for node in net.getNodes():
        incoming = [
            ln for e in node.getIncoming() if e.getFunction() == "" for ln in e.getLanes() if ln.allows("passenger")
        ]
        junction = is_junction(node)  # a zebra on a straight street gets no give-way signs
        for lane in incoming:
            conns = lane.getOutgoing()
            if not conns:
                continue
            shape = np.asarray(lane.getShape(), np.float32)
            end, prev = shape[-1], shape[-2]
            direction = (end - prev) / max(np.linalg.norm(end - prev), 1e-6)
            yaw = float(np.arctan2(direction[1], direction[0]))
            normal = np.array([-direction[1], direction[0]], np.float32)
            half = lane.getWidth() / 2
            line = np.stack([end + normal * half, end - normal * half]).astype(np.float32)
            # Poles stand on the kerb right of the rightmost car lane; one per lane, staggered back along the kerb.
            first = lane.getEdge().getLanes()[_first_car_lane(lane.getEdge())]
            kerb = np.asarray(first.getShape()[-1], np.float32) - normal * (first.getWidth() / 2 + 0.8)
            pole = kerb - direction * 1.5 * (lane.getIndex() - first.getIndex())
            main = sorted(conns, key=lambda c: "srlLRt".find(c.getDirection()) % 6)[0]
            state = main.getState()
            if main.getTLSID():
                lights.append(
                    LightGroup(
                        main.getTLSID(),
                        main.getTLLinkIndex(),
                        lane.getID(),
                        _far_side_pole(conns, pole, lane.getIndex() - first.getIndex()),
                        yaw + np.pi,
                        line,
                    )
                )
                stop_lines.append(line)
            elif state in ("s", "w", "m") and lane.getIndex() == _first_car_lane(lane.getEdge()) and junction:
                kind = YIELD_SIGN if state == "m" else STOP_SIGN
                full = _edge_stop_line(lane.getEdge(), normal)
                signs.append((pole, yaw + np.pi, kind, 0.0, full, lane.getID()))
                if kind == STOP_SIGN:
                    stop_lines.append(full)
    for edge in net.getEdges():
        if edge.getFunction() != "":
            continue
        kmh = round(edge.getSpeed() * 3.6)
        prev_speeds = [e.getSpeed() for e in edge.getIncoming() if e.getFunction() == ""]
        if prev_speeds and all(abs(s - edge.getSpeed()) < 0.1 for s in prev_speeds) and edge.getLength() < 300:
            continue
        lane0 = edge.getLanes()[_first_car_lane(edge)]
        shape = np.asarray(lane0.getShape(), np.float32)
        if len(shape) < 2 or lane0.getLength() < 30:
            continue
        d = (shape[1] - shape[0]) / max(np.linalg.norm(shape[1] - shape[0]), 1e-6)
        normal = np.array([-d[1], d[0]], np.float32)
        pos = shape[0] + d * 12 - normal * (lane0.getWidth() / 2 + 1.2)
        signs.append(
            (
                pos,
                float(np.arctan2(d[1], d[0])) + np.pi,
                SPEED_SIGN,
                float(kmh),
                np.zeros((2, 2), np.float32),
                lane0.getID(),
            )
        )
    road = RoadMap(
        drivable=drivable,
        sidewalks=sidewalks,
        crosswalks=crosswalks,
        markings=markings,
        marking_kind=np.asarray(kinds, np.int8),
        stop_lines=np.asarray(stop_lines, np.float32).reshape(-1, 2, 2),
        lane_centers=centers,
        lane_width=widths,
        lane_speed=speeds,
        name=Path(path).name,
    )
    return Network(
        path=Path(path),
        net=net,
        road=road,
        lights=lights,
        sign_pos=np.asarray([s[0] for s in signs], np.float32).reshape(-1, 2),
        sign_yaw=np.asarray([s[1] for s in signs], np.float32),
        sign_kind=np.asarray([s[2] for s in signs], np.int8),
        sign_value=np.asarray([s[3] for s in signs], np.float32),
        sign_stop_line=np.asarray([s[4] for s in signs], np.float32).reshape(-1, 2, 2),
        sign_lane=[s[5] for s in signs],
    )


def is_junction(node: sumolib.net.node.Node) -> bool:
    """Three or more roads meet here; a node that only joins two (a bend, a speed change, a zebra) is no junction."""
    roads = {e.getFromNode().getID() for e in node.getIncoming()} | {e.getToNode().getID() for e in node.getOutgoing()}
    return len(roads) >= 3


def _far_side_pole(conns: list, near_pole: np.ndarray, stagger: int) -> np.ndarray:
    """Signal heads stand on the far kerb across the junction (as in North America), so a car waiting at the stop
    line still sees its light ahead; without a straight exit the pole stays on the near kerb."""
    straight = [c for c in conns if c.getDirection() == "s"]
    if not straight:
        return near_pole
    out = straight[0].getTo()
    first = out.getLanes()[_first_car_lane(out)]
    shape = np.asarray(first.getShape(), np.float32)
    d = (shape[1] - shape[0]) / max(float(np.linalg.norm(shape[1] - shape[0])), 1e-6)
    normal = np.array([-d[1], d[0]], np.float32)
    return shape[0] - normal * (first.getWidth() / 2 + 0.8) + d * (2.0 + 1.5 * stagger)


def _first_car_lane(edge: sumolib.net.edge.Edge) -> int:
    return next((i for i, ln in enumerate(edge.getLanes()) if ln.allows("passenger")), 0)


def _edge_stop_line(edge: sumolib.net.edge.Edge, normal: np.ndarray) -> np.ndarray:
    """A stop line across every car lane of an edge, at its end."""
    ends = [
        (np.asarray(ln.getShape()[-1], np.float32), ln.getWidth()) for ln in edge.getLanes() if ln.allows("passenger")
    ]
    right = ends[0][0] - normal * ends[0][1] / 2
    left = ends[-1][0] + normal * ends[-1][1] / 2
    return np.stack([left, right]).astype(np.float32)
