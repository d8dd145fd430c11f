"""The plan a driver drives beside the plan the expert makes from the same state, replan by replan.

A closed-loop score says that a policy failed; this says how: a plan that asks for a little less speed than the
current one at every replan (the crawl of session 16), braking that starts too late or too gently for a red, a
turn that swings wide. The expert shadows the driver: it sees every state the driver reaches and plans from it,
but never drives (its plan is what `generate --takeover` would record as the label there).
"""

from __future__ import annotations

import csv
import io
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np

from worlddrive.eval.closed_loop import EpisodeResult, run_episode
from worlddrive.eval.drivers import PolicyDriver, make_driver
from worlddrive.fileio import write_text_atomic
from worlddrive.sim.expert import Expert, ExpertOutput
from worlddrive.sim.geometry import distance_along
from worlddrive.sim.state import EGO_SPEED, WorldState
from worlddrive.sim.vehicle import DT, WAYPOINT_DT
from worlddrive.sim.world import World

HORIZONS_S = (0.5, 1.0, 2.0, 4.0)  # plan times compared
AT = tuple(round(h / WAYPOINT_DT) - 1 for h in HORIZONS_S)  # their waypoint indices
SLOWER_M = 2.0  # a plan this much shorter at 4 s than the expert's counts as asking for less speed


@dataclass
class ProbeRow:
    t: float
    speed: float  # m/s
    control: str  # the expert's view of what governs the next stop line: a light's colour, a sign, or "-"
    stop_m: float  # distance to the route's next stop line (world.next_stop)
    off_route_m: float  # the ego's lateral offset from the route (far off it, the expert plans its way back)
    plan_m: tuple[float, ...]  # distance along the driver's plan at HORIZONS_S
    expert_m: tuple[float, ...]  # the same along the expert's plan from this state
    plan_y4: float  # lateral offset of the plan's 4 s waypoint, m (left +)
    expert_y4: float
    accel: float  # the driver's acceleration command, m/s²
    expert_accel: float


@dataclass
class Probe:
    result: EpisodeResult
    rows: list[ProbeRow]

    def summary(self) -> dict[str, float]:
        """Mean plan gap to the expert (driver - expert, m; negative: asks for less speed) at 1 s and 4 s, and the
        share of replans whose 4 s waypoint falls SLOWER_M or more short of the expert's."""
        if not self.rows:
            return {"replans": 0, "mean_gap_1s_m": np.nan, "mean_gap_4s_m": np.nan, "slower_share": np.nan}
        gaps = np.array([np.subtract(r.plan_m, r.expert_m) for r in self.rows])  # (N, len(HORIZONS_S))
        g1, g4 = gaps[:, HORIZONS_S.index(1.0)], gaps[:, HORIZONS_S.index(4.0)]
        return {
            "replans": len(self.rows),
            "mean_gap_1s_m": float(g1.mean()),
            "mean_gap_4s_m": float(g4.mean()),
            "slower_share": float((g4 <= -SLOWER_M).mean()),
        }

    def write_csv(self, path: Path) -> None:
        """One line per compared replan; the plan distances as one column per horizon (plan_m_0.5s, ...)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(_columns())
        for r in self.rows:
            w.writerow([x for v in astuple(r) for x in (v if isinstance(v, tuple) else (v,))])
        write_text_atomic(path, buf.getvalue())


def _columns() -> list[str]:
    return [
        n
        for f in fields(ProbeRow)
        for n in ([f"{f.name}_{h:g}s" for h in HORIZONS_S] if f.name in ("plan_m", "expert_m") else [f.name])
    ]


def probe_episode(spec: str, family: str, seed: int, every_s: float = 1.0, replan_every: int = 5) -> Probe:
    """Drive (family, seed) with the driver `spec` names (as for `worlddrive eval`) and compare its plan with the
    expert's every `every_s` seconds. For a learned policy `every_s` must be a whole number of its replan periods,
    so that every compared plan is a fresh one rather than an older plan moved forward."""
    driver = make_driver(spec, plan=True, replan_every=replan_every)
    every = round(every_s / DT)
    period = replan_every if isinstance(driver, PolicyDriver) else 1
    if every < 1 or abs(every * DT - every_s) > 1e-6 or every % period:
        raise ValueError(
            f"--every {every_s:g} s: give a multiple of {period * DT:g} s (the driver plans every {period} 10 Hz steps)"
        )
    rows: list[ProbeRow] = []
    shadow: list[Expert] = []
    step = 0

    def on_step(world: World, state: WorldState, out: ExpertOutput) -> None:
        nonlocal step
        if not shadow:  # built after the world's reset, like the driver
            shadow.append(Expert(world))
        e = shadow[0].act(state, plan=True)  # every step: the expert's memory (a served stop sign) follows the driver
        if step % every == 0:
            rows.append(_row(world, state, out, e))
        step += 1

    result = run_episode(family, seed, driver, on_step=on_step)
    return Probe(result, rows)


def _row(world: World, state: WorldState, out: ExpertOutput, e: ExpertOutput) -> ProbeRow:
    stop_m, _ = world.next_stop()
    control = e.facts.get("light") or e.facts.get("sign") or "-"
    return ProbeRow(
        t=round(float(state.t), 2),
        speed=round(float(state.ego[EGO_SPEED]), 3),
        control=str(control),
        stop_m=round(stop_m, 2),
        off_route_m=round(float(world.ego_lateral), 2),
        plan_m=_at_horizons(out.trajectory),
        expert_m=_at_horizons(e.trajectory),
        plan_y4=round(float(out.trajectory[AT[-1], 1]), 3),
        expert_y4=round(float(e.trajectory[AT[-1], 1]), 3),
        accel=round(float(out.accel), 3),
        expert_accel=round(float(e.accel), 3),
    )


def _at_horizons(trajectory: np.ndarray) -> tuple[float, ...]:
    """Distance along a plan (W, 3) at each of HORIZONS_S."""
    return tuple(round(float(d), 2) for d in distance_along(trajectory)[list(AT)])
