"""One running world: a SUMO simulation (traffic, pedestrians, lights) with our ego placed into it every step.

SUMO moves every other road user; we add what it lacks: the ego's bicycle model, scripted pedestrians whose intention
shows before they step out, parked cars, rude drivers (cut-ins, late braking, red-light runners) and the light
timing of the dilemma-zone family. libsumo runs one simulation per process, so there is one `World` per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libsumo
import numpy as np
from libsumo import constants as tc

from worlddrive.sim.network import Network, cache_dir
from worlddrive.sim.route import RoutePath
from worlddrive.sim.state import (
    CAR,
    CROSS,
    EGO_SPEED,
    EGO_X,
    EGO_Y,
    EGO_YAW,
    GREEN,
    LIGHT_CONTROL,
    NO_CONTROL,
    PARKED,
    RED,
    SPEED_SIGN,
    STOP_CONTROL,
    STOP_HORIZON,
    STOP_REST_REACH,
    STOP_REST_SPEED,
    STOP_SIGN,
    STOP_WAIT_S,
    TRUCK,
    WAIT,
    YELLOW,
    YIELD_CONTROL,
    WorldState,
    empty,
    wrap_angle,
)
from worlddrive.sim.vehicle import DT, BicycleLimits, KinematicBicycle

VEHICLE_VARS = (tc.VAR_POSITION, tc.VAR_ANGLE, tc.VAR_SPEED, tc.VAR_LENGTH, tc.VAR_WIDTH, tc.VAR_TYPE)
INSERT_CLEARANCE = 10.0  # m from the ego centre to the front bumper of a car SUMO inserts; closer ones are removed
# s a lane change takes. SUMO's default (0) moves a car a whole lane sideways within one 0.1 s step, which no driver
# can react to (a standing car can land right in front of the ego); with a duration, SUMO's simple continuous
# lane-change model slides it across over that time, its angle tilted accordingly.
LANE_CHANGE_S = 2.0
PERSON_VARS = (tc.VAR_POSITION, tc.VAR_ANGLE, tc.VAR_SPEED, tc.VAR_ROAD_ID, tc.VAR_NEXT_EDGE)


def _placed(row: dict) -> bool:
    """False for an agent SUMO reports at INVALID_DOUBLE_VALUE (-2**30 m): seen for a pedestrian for a few steps
    (policy-takeover data, crosswalk 324-327); kept, it put a box 1e9 m away into the labels and the BEV."""
    return row[tc.VAR_POSITION][0] != tc.INVALID_DOUBLE_VALUE


VTYPES = """<additional>
  <vType id="car" vClass="passenger" length="4.6" width="1.85" carFollowModel="IDM" accel="2.2" decel="4.0"
         emergencyDecel="8" tau="1.2" minGap="2.5" sigma="0.3" speedFactor="normc(1,0.08,0.8,1.2)"/>
  <vType id="truck" vClass="passenger" length="9.5" width="2.5" carFollowModel="IDM" accel="1.1" decel="3.5"
         emergencyDecel="7" tau="1.5" minGap="3" maxSpeed="20" guiShape="truck"/>
  <vType id="rude" vClass="passenger" length="4.6" width="1.85" carFollowModel="IDM" accel="3.0" decel="6.0"
         emergencyDecel="9" tau="0.6" minGap="1.5" speedFactor="1.2" lcAssertive="5" lcCooperative="0.1"
         lcSpeedGain="3"/>
  <vType id="ego" vClass="passenger" length="4.6" width="1.9"/>
  <vType id="walker" vClass="pedestrian" width="0.5" length="0.4" speedFactor="normc(1,0.1,0.7,1.3)"/>
</additional>
"""
_LIGHT_CODE = {"G": GREEN, "g": GREEN, "O": GREEN, "o": GREEN, "y": YELLOW, "Y": YELLOW}

_active: World | None = None  # libsumo holds one simulation per process: the World that owns it


def _vtypes_file() -> str:
    path = cache_dir() / "vtypes.add.xml"
    if not path.exists() or path.read_text() != VTYPES:
        tmp = path.with_suffix(".partial")
        tmp.write_text(VTYPES)
        tmp.replace(path)
    return str(path)


@dataclass
class ScriptedPedestrian:
    """A pedestrian we move ourselves: walks to the curb, shows its intention (turns to the road, slows), then
    crosses when the ego comes within `trigger_s` metres of `cross_at_s` along its route — or never, if it waits."""

    path: np.ndarray  # (K, 2): sidewalk approach ... curb point ... far side
    curb_index: int  # index in `path` of the curb point
    intent: int  # CROSS or WAIT
    cross_at_s: float  # route arc length of the crossing point
    trigger_s: float  # start crossing when the ego is this far (route metres) before the crossing point
    speed: float = 1.3
    # runtime
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    yaw: float = 0.0
    vel: float = 0.0
    seg: int = 0
    phase: str = "approach"

    def reset(self) -> None:
        self.pos = self.path[0].astype(np.float64).copy()
        self.seg, self.phase, self.vel = 0, "approach", self.speed
        d = self.path[1] - self.path[0]
        self.yaw = float(np.arctan2(d[1], d[0]))

    def step(self, ego_s: float, dt: float) -> None:
        if self.phase == "done":
            self.vel = 0.0
            return
        if self.phase == "curb":
            # Body language: a crosser faces the road and shuffles; a waiter turns away and stands.
            target_yaw = (
                self._segment_yaw(self.curb_index) if self.intent == CROSS else self._segment_yaw(0) + np.pi / 2
            )
            self.yaw += float(np.clip(wrap_angle(target_yaw - self.yaw), -1.5 * dt, 1.5 * dt))
            self.vel = 0.0
            if self.intent == CROSS and ego_s >= self.cross_at_s - self.trigger_s:
                self.phase = "cross"
            return
        target = self.path[self.seg + 1]
        d = target - self.pos
        dist = float(np.hypot(*d))
        # Slow down when nearing the curb: the cue that comes before a step onto the road.
        near_curb = self.phase == "approach" and self.seg + 1 == self.curb_index and dist < 1.5
        self.vel = self.speed * (0.45 if near_curb else 1.0)
        step = self.vel * dt
        self.yaw = float(np.arctan2(d[1], d[0]))
        if dist <= step:
            self.pos = target.astype(np.float64).copy()
            self.seg += 1
            if self.phase == "approach" and self.seg == self.curb_index:
                self.phase = "curb"
            elif self.seg + 1 >= len(self.path):
                self.phase = "done"
        else:
            self.pos = self.pos + d / dist * step

    def _segment_yaw(self, i: int) -> float:
        d = self.path[min(i + 1, len(self.path) - 1)] - self.path[i]
        return float(np.arctan2(d[1], d[0]))


@dataclass
class RudeDriver:
    """A scripted misbehaviour of one SUMO vehicle: 'cut_in', 'late_brake' or 'red_runner'."""

    vid: str
    kind: str
    target_lane: int = 0
    trigger_gap: float = 8.0  # metres ahead of the ego's front when it acts
    done: bool = False


@dataclass
class TrafficSpec:
    """One SUMO vehicle: its route, type, departure time, and where it appears."""

    edges: list[str]
    vtype: str
    depart: float
    depart_pos: str  # metres along the first edge, or a SUMO keyword
    depart_lane: int | str = "best"
    depart_speed: str = "desired"


@dataclass
class WorldSpec:
    """Everything a `World` needs to start; built by a scenario family from (family, seed)."""

    network: Network
    route: RoutePath
    seed: int
    ego_start_s: float
    ego_speed: float
    duration_s: float
    traffic: list[TrafficSpec]
    walker_routes: list[tuple[str, str, float, float]]  # SUMO persons: (from edge, to edge, depart, departPos)
    scripted_pedestrians: list[ScriptedPedestrian] = field(default_factory=list)
    parked: np.ndarray = field(default_factory=lambda: empty(6))  # (K, 6) static boxes
    rude: list[RudeDriver] = field(default_factory=list)
    yellow_trigger_s: float | None = None  # the ego's light turns yellow when the ego is this far from the line
    light_phase_offset: float = 0.0  # seconds into the light cycle at start


class World:
    """`reset()` starts the scenario; `step(accel, steer)` advances 0.1 s; both return the new `WorldState`."""

    def __init__(self, spec: WorldSpec, limits: BicycleLimits | None = None):
        self.spec = spec
        self.net = spec.network
        self.route = spec.route
        self.ego = KinematicBicycle(limits)
        self.t = 0.0
        self.ego_index = 0
        self.ego_s = 0.0
        self.ego_lateral = 0.0
        self._held: set[str] = set()
        self._yellow_done = False
        self._tls_ids = sorted({lg.tls_id for lg in self.net.lights})
        self._lane_last = {lane: k for k, lane in enumerate(self.route.lane)}  # lane id -> last route index on it
        self.light_line_s, self.sign_line_s, self._stop_s, self._stop_control = self._stop_lines()
        self._rest_at: dict[int, float] = {}  # route stop line (stop sign) -> time the ego came to rest before it
        # What every WorldState of this world shares; read-only, so that no reader can change another's state.
        lights = self.net.lights
        self._static = {
            "light_pos": _frozen(np.asarray([lg.pos for lg in lights], np.float32).reshape(-1, 2)),
            "light_yaw": _frozen(np.asarray([lg.yaw for lg in lights], np.float32)),
            "light_stop_line": _frozen(np.asarray([lg.stop_line for lg in lights], np.float32).reshape(-1, 2, 2)),
            "route": _frozen(self.route.xy.astype(np.float32)),
        }

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> WorldState:
        global _active
        args = [
            "-n",
            str(self.net.path),
            "-a",
            _vtypes_file(),
            "--step-length",
            str(DT),
            "--no-step-log",
            "true",
            "--no-warnings",
            "true",
            "--seed",
            str(self.spec.seed % 2**31),
            "--collision.action",
            "none",
            "--time-to-teleport",
            "-1",
            "--ignore-route-errors",
            "true",
            "--default.action-step-length",
            str(DT),
            "--collision.check-junctions",
            "false",
            "--pedestrian.model",
            "nonInteracting",
            "--lanechange.duration",
            str(LANE_CHANGE_S),
        ]
        if _active is not None:
            libsumo.load(args)  # replaces whichever simulation ran before; that World can no longer step
        else:
            libsumo.start(["sumo", *args])
        _active = self
        self.t = 0.0
        self._held.clear()
        self._rest_at.clear()
        self._yellow_done = False
        spec = self.spec
        i0 = int(np.searchsorted(self.route.s, spec.ego_start_s))
        x, y = self.route.xy[i0]
        self.ego.reset(float(x), float(y), float(self.route.yaw[i0]), spec.ego_speed)
        self.ego_index, self.ego_s, self.ego_lateral = i0, float(self.route.s[i0]), 0.0
        libsumo.route.add("ego_route", self.route.edges)
        libsumo.vehicle.add("ego", "ego_route", typeID="ego", depart="now")
        libsumo.vehicle.setSpeedMode("ego", 0)
        libsumo.vehicle.setLaneChangeMode("ego", 0)
        for k, car in enumerate(spec.traffic):
            libsumo.route.add(f"r{k}", car.edges)
            libsumo.vehicle.add(
                f"v{k}",
                f"r{k}",
                typeID=car.vtype,
                depart=f"{car.depart:.1f}",
                departPos=car.depart_pos,
                departSpeed=car.depart_speed,
                departLane=str(car.depart_lane),
            )
        for k, (src, dst, depart, pos) in enumerate(spec.walker_routes):
            pid = f"p{k}"
            stages = libsumo.simulation.findIntermodalRoute(src, dst, modes="", depart=depart, vType="walker")
            if not stages:
                continue
            libsumo.person.add(pid, src, pos, depart=depart, typeID="walker")
            for st in stages:
                libsumo.person.appendStage(pid, st)
        for ped in spec.scripted_pedestrians:
            ped.reset()
        for tls in self._tls_ids:
            self._offset_light(tls, spec.light_phase_offset)
        for rude in spec.rude:
            rude.done = False
        self._place_ego()
        libsumo.simulationStep()
        self._subscribe_new()
        return self.state()

    def close(self) -> None:
        global _active
        if _active is self:
            libsumo.close()
            _active = None

    # ------------------------------------------------------------------ stepping

    def step(self, accel: float, steer: float) -> WorldState:
        if _active is not self:
            raise RuntimeError(
                "this World's simulation is not running: libsumo holds one simulation per process, and another World "
                "was reset after this one (or this one was never reset / was closed); use one World per process"
            )
        self.ego.step(accel, steer)
        self.t += DT
        self._update_progress()
        self._serve_stop()
        for ped in self.spec.scripted_pedestrians:
            ped.step(self.ego_s, DT)
        self._rude_behaviour()
        self._hold_for_scripted_pedestrians()
        self._yellow_trigger()
        self._place_ego()
        libsumo.simulationStep()
        self._subscribe_new()
        return self.state()

    def _place_ego(self) -> None:
        s = self.ego.state
        half = self.ego.limits.length / 2
        fx, fy = s[EGO_X] + half * np.cos(s[EGO_YAW]), s[EGO_Y] + half * np.sin(s[EGO_YAW])
        angle = 90.0 - np.degrees(s[EGO_YAW])
        try:
            libsumo.vehicle.moveToXY("ego", "", -1, float(fx), float(fy), float(angle), 1)
            libsumo.vehicle.setPreviousSpeed("ego", float(s[EGO_SPEED]))
        except libsumo.TraCIException:
            pass  # the ego left every road SUMO knows; it stays where SUMO last had it for the others

    def _update_progress(self) -> None:
        i, s, lat = self.route.project(self.ego.state[:2], hint=self.ego_index)
        self.ego_index, self.ego_s, self.ego_lateral = i, max(self.ego_s, s), lat

    def _subscribe_new(self) -> None:
        """Watch what SUMO inserted this step. SUMO does not see the ego (moved by `moveToXY`, often on a junction or
        another lane) when it inserts a car, and may put one on top of it or a few metres away at speed; such a car is
        taken out again (scripted rude drivers excepted: they start near the ego on purpose)."""
        scripted = {rude.vid for rude in self.spec.rude}
        ego = self.ego.state
        for vid in libsumo.simulation.getDepartedIDList():
            if vid != "ego" and vid not in scripted:
                x, y = libsumo.vehicle.getPosition(vid)  # front bumper
                if np.hypot(x - ego[EGO_X], y - ego[EGO_Y]) < INSERT_CLEARANCE:
                    libsumo.vehicle.remove(vid)
                    continue
            libsumo.vehicle.subscribe(vid, VEHICLE_VARS)
        for pid in libsumo.simulation.getDepartedPersonIDList():
            libsumo.person.subscribe(pid, PERSON_VARS)

    # ------------------------------------------------------------------ scripted behaviour

    def _ego_front_s(self) -> float:
        return self.ego_s + self.ego.limits.length / 2

    def _rude_behaviour(self) -> None:
        if all(rude.done for rude in self.spec.rude):
            return  # nothing left to do: skip the (costly) read of every vehicle's subscription
        veh = libsumo.vehicle.getAllSubscriptionResults()
        for rude in self.spec.rude:
            if rude.done or rude.vid not in veh:
                continue
            x, y = veh[rude.vid][tc.VAR_POSITION]
            _i, s, lat = self.route.project(np.array([x, y]), hint=self.ego_index)
            gap = s - veh[rude.vid][tc.VAR_LENGTH] - self._ego_front_s()  # its rear minus our front
            if rude.kind == "cut_in" and 0 < gap < rude.trigger_gap and abs(lat) > 1.5:
                libsumo.vehicle.setLaneChangeMode(rude.vid, 0)
                libsumo.vehicle.changeLane(rude.vid, rude.target_lane, 3.0)
                rude.done = True
            elif rude.kind == "late_brake" and 0 < gap < rude.trigger_gap and abs(lat) < 1.5:
                libsumo.vehicle.slowDown(rude.vid, 0.0, max(veh[rude.vid][tc.VAR_SPEED] / 5.5, 0.5))
                rude.done = True
            elif rude.kind == "red_runner":
                libsumo.vehicle.setSpeedMode(rude.vid, 7)  # ignores lights and right of way, keeps its distance
                rude.done = True

    def _hold_for_scripted_pedestrians(self) -> None:
        """SUMO drivers do not see our scripted pedestrians: stop any that would drive into one."""
        on_road = [p.pos for p in self.spec.scripted_pedestrians if p.phase == "cross"]
        if not on_road and not self._held:
            return  # no one to hold and no one to release
        veh = libsumo.vehicle.getAllSubscriptionResults()
        held = set()
        for vid, r in veh.items():
            if vid == "ego" or not on_road:
                continue
            x, y = r[tc.VAR_POSITION]
            yaw = np.radians(90.0 - r[tc.VAR_ANGLE])
            h = np.array([np.cos(yaw), np.sin(yaw)])
            for p in on_road:
                rel = p - np.array([x, y])
                ahead, side = float(rel @ h), float(h[0] * rel[1] - h[1] * rel[0])
                if -1.0 < ahead < 25.0 and abs(side) < 2.5:
                    held.add(vid)
        for vid in held - self._held:
            libsumo.vehicle.setSpeed(vid, 0.0)
        for vid in self._held - held:
            if vid in veh:
                libsumo.vehicle.setSpeed(vid, -1)
        self._held = held

    def _yellow_trigger(self) -> None:
        """Dilemma zone: turn the ego's light yellow when it is `yellow_trigger_s` metres from the stop line."""
        spec = self.spec
        if spec.yellow_trigger_s is None or self._yellow_done:
            return
        light = self.ego_light()
        if light is None:
            return
        lg, line_s = light
        if line_s - self._ego_front_s() > spec.yellow_trigger_s:
            self._force_state(lg.tls_id, lg.link_index, green=True)
            return
        self._force_state(lg.tls_id, lg.link_index, green=False)
        self._yellow_done = True

    def _force_state(self, tls: str, link: int, green: bool) -> None:
        logic = libsumo.trafficlight.getAllProgramLogics(tls)[0]
        states = [p.state for p in logic.phases]
        want = (
            [i for i, st in enumerate(states) if st[link] in "Gg"]
            if green
            else [i for i, st in enumerate(states) if st[link] in "yY" and states[i - 1][link] in "Gg"]
        )
        if not want:
            return
        current = libsumo.trafficlight.getPhase(tls)
        if green:
            if current not in want:
                libsumo.trafficlight.setPhase(tls, want[0])
            libsumo.trafficlight.setPhaseDuration(tls, 60.0)
        else:
            libsumo.trafficlight.setPhase(tls, want[0])

    def _offset_light(self, tls: str, offset: float) -> None:
        logic = libsumo.trafficlight.getAllProgramLogics(tls)[0]
        durations = np.array([p.duration for p in logic.phases])
        t = offset % durations.sum()
        k = int(np.searchsorted(np.cumsum(durations), t, side="right"))
        libsumo.trafficlight.setPhase(tls, k)
        libsumo.trafficlight.setPhaseDuration(tls, float(np.cumsum(durations)[k] - t))

    def ego_light(self):
        """The next light on the ego's route ahead and the arc length of its stop line, or None."""
        for lg in self.net.lights:
            line_s = self.lane_end_s(lg.lane_id)
            if line_s is not None and line_s > self._ego_front_s() - 1.0:
                return lg, line_s
        return None

    def _stop_lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Arc length of the stop line of each light (L,) and each stop / yield sign (S,) (-1: off the route, or a
        speed sign), and the route's stop lines in order (Q,) with their controls (Q,)."""
        net, route = self.net, self.route
        light_line_s = np.array([self.lane_end_s(lg.lane_id) or -1.0 for lg in net.lights])  # (L,)
        edge_end = {lane.rsplit("_", 1)[0]: float(s) for lane, s in zip(route.lane, route.s, strict=True)}
        sign_line_s = np.array(
            [
                edge_end.get(lane.rsplit("_", 1)[0], -1.0) if kind != SPEED_SIGN else -1.0
                for lane, kind in zip(net.sign_lane, net.sign_kind, strict=True)
            ]
        )  # (S,)
        lines = np.concatenate([light_line_s, sign_line_s])
        sign_control = np.where(np.asarray(net.sign_kind) == STOP_SIGN, STOP_CONTROL, YIELD_CONTROL)
        controls = np.concatenate([np.full(len(light_line_s), LIGHT_CONTROL), sign_control])
        order = np.argsort(lines, kind="stable")
        on_route = order[lines[order] >= 0]
        return light_line_s, sign_line_s, lines[on_route], controls[on_route]

    def _next_stop_index(self) -> int:
        """Index of the route's next stop line ahead of the ego's front bumper (1 m past it still counts) that is not
        a served stop sign; len(self._stop_s) when none is left."""
        k = int(np.searchsorted(self._stop_s, self._ego_front_s() - 1.0, side="right"))
        while k < len(self._stop_s) and self._served(k):
            k += 1
        return k

    def _served(self, k: int) -> bool:
        return k in self._rest_at and round(self.t, 3) - self._rest_at[k] >= STOP_WAIT_S

    def _serve_stop(self) -> None:
        """Note when the ego comes to rest before its next stop sign: STOP_WAIT_S later the sign is served and
        `next_stop` moves on to the line after it. A car knows this from its own odometry; reported with the stop
        line, it lets a policy without memory tell "wait here" from "waited, go"."""
        k = self._next_stop_index()
        if k == len(self._stop_s) or self._stop_control[k] != STOP_CONTROL or k in self._rest_at:
            return
        if self.ego.state[EGO_SPEED] < STOP_REST_SPEED and self._stop_s[k] - self._ego_front_s() < STOP_REST_REACH:
            self._rest_at[k] = round(self.t, 3)  # rounded like WorldState.t, which the expert's own clock reads

    def next_stop(self) -> tuple[float, int]:
        """The route's next stop line ahead of the ego's front bumper (1 m past it still counts; a served stop sign's
        does not): its distance along the route and its control, or (STOP_HORIZON, NO_CONTROL) when none is that
        near."""
        front = self._ego_front_s()
        k = self._next_stop_index()
        if k == len(self._stop_s) or self._stop_s[k] - front > STOP_HORIZON:
            return STOP_HORIZON, NO_CONTROL
        return float(self._stop_s[k] - front), int(self._stop_control[k])

    def lane_end_s(self, lane_id: str) -> float | None:
        """Arc length along the route where a lane on it ends (its stop line), or None if the route avoids it."""
        idx = self._lane_last.get(lane_id)
        return None if idx is None else float(self.route.s[idx])

    # ------------------------------------------------------------------ reading the world

    def light_states(self) -> np.ndarray:
        codes = {tls: libsumo.trafficlight.getRedYellowGreenState(tls) for tls in self._tls_ids}
        return np.array([_LIGHT_CODE.get(codes[lg.tls_id][lg.link_index], RED) for lg in self.net.lights], np.int8)

    def state(self) -> WorldState:
        veh = libsumo.vehicle.getAllSubscriptionResults()
        ids = [vid for vid, r in veh.items() if vid != "ego" and _placed(r)]
        rows = [veh[vid] for vid in ids]
        # SUMO reports the front bumper and a compass angle; our boxes are centred, yaw counter-clockwise from +x.
        # Computed in float64 for all vehicles at once, rounded to float32 once, like every other field.
        v = np.array(
            [(*r[tc.VAR_POSITION], r[tc.VAR_ANGLE], r[tc.VAR_SPEED], r[tc.VAR_LENGTH], r[tc.VAR_WIDTH]) for r in rows],
            np.float64,  # given, not discovered: discovery costs more than the conversion
        ).reshape(-1, 6)  # x, y of the front, angle, speed, length, width
        yaw = np.radians(90.0 - v[:, 2])
        v[:, 0] -= 0.5 * v[:, 4] * np.cos(yaw)
        v[:, 1] -= 0.5 * v[:, 4] * np.sin(yaw)
        v[:, 2] = yaw
        parked = self.spec.parked
        vehicles = np.concatenate([v.astype(np.float32), parked.astype(np.float32)])
        kinds = [TRUCK if r[tc.VAR_TYPE] == "truck" else CAR for r in rows] + [PARKED] * len(parked)
        ids += [f"parked{k}" for k in range(len(parked))]
        people = libsumo.person.getAllSubscriptionResults()
        pids = [pid for pid, r in people.items() if _placed(r)]
        walkers = [people[pid] for pid in pids]
        intents = []
        for r in walkers:
            road, nxt = r[tc.VAR_ROAD_ID], r[tc.VAR_NEXT_EDGE]
            intents.append(CROSS if "_c" in road or ("_c" in nxt and ("_w" in road or road == "")) else WAIT)
        walk = np.array([(*r[tc.VAR_POSITION], r[tc.VAR_ANGLE], r[tc.VAR_SPEED]) for r in walkers], np.float64)
        walk = walk.reshape(-1, 4)
        walk[:, 2] = np.radians(90.0 - walk[:, 2])
        scripted = [(p.pos[0], p.pos[1], p.yaw, p.vel) for p in self.spec.scripted_pedestrians]
        peds = np.concatenate([walk.astype(np.float32), np.asarray(scripted, np.float32).reshape(-1, 4)])
        for k, p in enumerate(self.spec.scripted_pedestrians):
            intents.append(p.intent)
            pids.append(f"s{k}")
        net = self.net
        stop_distance, stop_control = self.next_stop()
        return WorldState(
            t=round(self.t, 3),
            ego=self.ego.state.astype(np.float32),
            ego_size=(self.ego.limits.length, self.ego.limits.width),
            vehicles=vehicles,
            vehicle_kind=np.asarray(kinds, np.int8),
            vehicle_ids=ids,
            pedestrians=peds,
            pedestrian_intent=np.asarray(intents, np.int8),
            pedestrian_ids=pids,
            light_state=self.light_states(),
            sign_pos=net.sign_pos,
            sign_yaw=net.sign_yaw,
            sign_kind=net.sign_kind,
            sign_value=net.sign_value,
            sign_stop_line=net.sign_stop_line,
            speed_limit=float(self.route.speed_limit[self.ego_index]),
            command=self.route.command_at(self.ego_s),
            stop_distance=stop_distance,
            stop_control=stop_control,
            **self._static,
        )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a
