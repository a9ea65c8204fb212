"""Agents and their motion for one scene: the ego, traffic, crossing pedestrians, parked cars.

Vehicles follow routes on the town's lane graph. Their longitudinal motion is the Intelligent Driver
Model (IDM) towards a desired speed that respects the curvature ahead (lateral acceleration limit,
anticipated with a braking-feasible profile), behind leaders on their path, and stopping before
pedestrian crossings that a pedestrian occupies. Pedestrians are scheduled to cross at crossings on
the ego's route shortly before the ego arrives, so the ego has to see them to know it will stop: the
world is built to reward vision over constant-velocity extrapolation.

Everything is sampled at ``SIM_HZ``; :meth:`Agent.pose_at` interpolates any timestamp.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry import LineString

from models.common.params import SynthParams
from models.world.town import LANE_WIDTH, Town

SIM_HZ = 20.0
LATERAL_ACCEL = 2.0  # m/s^2, comfortable cornering
COMFORT_DECEL = 2.0  # m/s^2, used to anticipate curves
IDM_ACCEL, IDM_DECEL, IDM_HEADWAY, IDM_GAP = 1.6, 2.5, 1.3, 3.0

CATEGORY = {"car": "vehicle.car", "truck": "vehicle.truck", "pedestrian": "human.pedestrian.adult"}


@dataclass
class Agent:
    kind: str  # ego / car / truck / pedestrian
    size: np.ndarray  # (3,) w, l, h
    xy: np.ndarray  # (T, 2) at SIM_HZ
    yaw: np.ndarray  # (T,) unwrapped
    speed: np.ndarray  # (T,)
    color: np.ndarray  # (3,) uint8
    parked: bool = False
    route: np.ndarray | None = None  # (R, 2) the ego's planned route from its start (ego only), world metres

    def pose_at(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) and yaw at time(s) ``t`` seconds from the scene start, linearly interpolated."""
        t = np.asarray(t, float)
        grid = np.arange(len(self.yaw)) / SIM_HZ
        x = np.interp(t, grid, self.xy[:, 0])
        y = np.interp(t, grid, self.xy[:, 1])
        yaw = np.interp(t, grid, self.yaw)
        return np.stack([x, y], axis=-1), (yaw + math.pi) % (2 * math.pi) - math.pi

    def speed_at(self, t) -> np.ndarray:
        return np.interp(np.asarray(t, float), np.arange(len(self.speed)) / SIM_HZ, self.speed)

    @property
    def moving(self) -> bool:
        return bool(self.speed.max() > 0.2)


@dataclass
class _Route:
    pts: np.ndarray  # (N, 2)
    s: np.ndarray  # (N,) cumulative arc length
    heading: np.ndarray  # (N,) unwrapped
    v_allow: np.ndarray  # (N,) braking-feasible curvature speed limit
    crossings: list  # [(crossing index, s_enter, s_exit)]


def simulate_scene(town: Town, params: SynthParams, rng: np.random.Generator,
                   duration: float) -> tuple[Agent, list[Agent]]:
    """Simulate ``duration`` seconds; returns the ego and the other agents (vehicles, pedestrians, parked)."""
    steps = int(round(duration * SIM_HZ)) + 1
    ego_speed = rng.uniform(7.0, 11.0)
    ego_route_paths = _random_route(town, rng, _start_lane(town, rng), ego_speed * duration + 120.0, turn_bias=0.85)
    ego_route = _make_route(town, ego_route_paths, ego_speed)
    # start so that the first junction (a turn or a curve, usually) comes within the scene
    first_len = town.paths[ego_route_paths[0]].length
    ego_s0 = rng.uniform(0.0, max(first_len - 0.35 * ego_speed * duration, 1.0))
    ego_v0 = ego_speed * rng.choice([0.0, 0.5, 1.0], p=[0.2, 0.3, 0.5])

    vehicles = [dict(kind="ego", route=ego_route, s=ego_s0, v=min(ego_v0, ego_route.v_allow[0]), v0=ego_speed,
                     size=np.array([1.85, 4.084, 1.6]))]
    # leaders on the ego's own route, then traffic anywhere near the ego
    n_lead = min(params.num_vehicles, 2)
    for k in range(params.num_vehicles):
        v0 = rng.uniform(6.0, 12.0)
        kind = "truck" if rng.random() < 0.15 else "car"
        size = np.array([2.5, 8.0, 3.2]) if kind == "truck" else np.array(
            [rng.uniform(1.75, 2.0), rng.uniform(4.2, 4.9), rng.uniform(1.45, 1.75)])
        if k < n_lead:
            route, s0 = ego_route, ego_s0 + rng.uniform(20.0, 70.0) + 25.0 * k
            v0 = min(v0, ego_speed * rng.uniform(0.7, 0.95))
            route = _make_route(town, ego_route_paths, v0)
        else:
            start = _start_lane(town, rng, near=ego_route.pts[0], radius=160.0)
            route = _make_route(town, _random_route(town, rng, start, v0 * duration + 80.0), v0)
            s0 = rng.uniform(0.0, 30.0)
        if any(_too_close(route, s0, other) for other in vehicles):
            continue
        vehicles.append(dict(kind=kind, route=route, s=s0, v=min(v0 * rng.uniform(0.6, 1.0), route.v_allow[0]),
                             v0=v0, size=size))

    pedestrians = _schedule_pedestrians(town, params, rng, ego_route, ego_s0, ego_speed, duration)
    ped_xy = np.stack([p["xy"] for p in pedestrians]) if pedestrians else np.zeros((0, steps, 2))  # (P, T, 2)

    xy = np.zeros((len(vehicles), steps, 2))
    yaw = np.zeros((len(vehicles), steps))
    speed = np.zeros((len(vehicles), steps))
    dt = 1.0 / SIM_HZ
    for t in range(steps):
        time = t * dt
        pos = np.array([_interp_route(v["route"], v["s"])[0] for v in vehicles])  # (V, 2)
        hdg = np.array([_interp_route(v["route"], v["s"])[1] for v in vehicles])
        xy[:, t], yaw[:, t] = pos, hdg
        speed[:, t] = [v["v"] for v in vehicles]
        busy = [p["crossing"] for p in pedestrians if p["busy"][0] - 1.0 <= time <= p["busy"][0] + 1.5]
        for i, veh in enumerate(vehicles):
            acc = _idm(veh, i, vehicles, pos, hdg, busy, ped_xy[:, t] if len(pedestrians) else ped_xy[:, 0])
            veh["v"] = max(veh["v"] + acc * dt, 0.0)
            veh["s"] = min(veh["s"] + veh["v"] * dt, veh["route"].s[-1])

    agents = []
    for i, veh in enumerate(vehicles):
        agents.append(Agent(kind=veh["kind"], size=veh["size"], xy=xy[i], yaw=np.unwrap(yaw[i]), speed=speed[i],
                            color=_vehicle_colour(rng, veh["kind"])))
    for p in pedestrians:
        agents.append(Agent(kind="pedestrian", size=p["size"], xy=p["xy"], yaw=p["yaw"], speed=p["speed"],
                            color=_clothes_colour(rng)))
    agents += _parked_cars(town, params, rng, ego_route, steps)
    agents[0].route = route_from(ego_route, ego_s0)
    return agents[0], agents[1:]


# --------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------


def _start_lane(town: Town, rng, near=None, radius=np.inf) -> int:
    cands = [i for i, p in enumerate(town.paths) if p.kind == "lane" and p.node < 0]
    if near is not None:
        cands = [i for i in cands if np.min(np.linalg.norm(town.paths[i].points - near, axis=1)) < radius] or cands
    return int(rng.choice(cands))


def _random_route(town: Town, rng, start: int, length: float, turn_bias: float = 0.5) -> list:
    """Path indices from ``start`` following successors until ``length`` metres are covered."""
    route, total = [start], town.paths[start].length
    while total < length:
        succ = town.paths[route[-1]].successors
        turns = [s for s in succ if town.paths[s].turn != "straight"]
        straight = [s for s in succ if town.paths[s].turn == "straight"]
        pool = turns if (turns and (not straight or rng.random() < turn_bias)) else straight
        nxt = int(rng.choice(pool))
        route.append(nxt)
        total += town.paths[nxt].length
    return route


def _make_route(town: Town, indices: list, v_max: float) -> _Route:
    pts = town.path_polyline(indices)
    heading = np.unwrap(np.concatenate([town.paths[indices[0]].headings] + [town.paths[i].headings[1:] for i in indices[1:]]))
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    ds = np.maximum(np.gradient(s), 1e-6)
    curvature = np.abs(np.gradient(heading) / ds)
    v_lim = np.minimum(v_max, np.sqrt(LATERAL_ACCEL / np.maximum(curvature, 1e-6)))
    v_allow = v_lim.copy()
    for k in range(len(s) - 2, -1, -1):  # backward pass: brake in time for the next curve
        v_allow[k] = min(v_allow[k], math.sqrt(v_allow[k + 1] ** 2 + 2 * COMFORT_DECEL * (s[k + 1] - s[k])))
    line = LineString(pts)
    crossings = []
    for ci, c in enumerate(town.crossings):
        if not line.intersects(c.polygon):
            continue
        inter = line.intersection(c.polygon)
        for part in getattr(inter, "geoms", [inter]):
            coords = np.asarray(part.coords)
            if len(coords) < 2:
                continue
            s_a, s_b = line.project(_pt(coords[0])), line.project(_pt(coords[-1]))
            crossings.append((ci, min(s_a, s_b), max(s_a, s_b)))
    return _Route(pts=pts, s=s, heading=heading, v_allow=v_allow, crossings=crossings)


def route_from(route: _Route, s0: float) -> np.ndarray:
    """(R, 2) the route's polyline from arc length ``s0`` on (its first point interpolated at ``s0``)."""
    start, _ = _interp_route(route, s0)
    return np.concatenate([start[None], route.pts[route.s > s0 + 1e-6]])


def _pt(c):
    from shapely.geometry import Point
    return Point(float(c[0]), float(c[1]))


def _interp_route(route: _Route, s: float) -> tuple[np.ndarray, float]:
    x = np.interp(s, route.s, route.pts[:, 0])
    y = np.interp(s, route.s, route.pts[:, 1])
    return np.array([x, y]), float(np.interp(s, route.s, route.heading))


def _too_close(route: _Route, s0: float, other: dict) -> bool:
    p, _ = _interp_route(route, s0)
    q, _ = _interp_route(other["route"], other["s"])
    return bool(np.linalg.norm(p - q) < 12.0)


# --------------------------------------------------------------------------------------------------
# Longitudinal control
# --------------------------------------------------------------------------------------------------


def _idm(veh: dict, i: int, vehicles: list, pos: np.ndarray, hdg: np.ndarray, busy_crossings: list,
         ped_pos: np.ndarray) -> float:
    route, s, v = veh["route"], veh["s"], veh["v"]
    v_des = max(float(np.interp(s, route.s, route.v_allow)), 0.5)
    gap, v_lead = np.inf, 0.0
    # other vehicles (and pedestrians) inside my corridor ahead
    lo, hi = np.searchsorted(route.s, [s, s + 60.0])
    window = route.pts[lo:hi + 1]  # (W, 2)
    if len(window) > 1:
        others = np.delete(np.arange(len(vehicles)), i)
        d = np.linalg.norm(pos[others, None, :] - window[None], axis=2)  # (V-1, W)
        k = np.argmin(d, axis=1)
        near = d[np.arange(len(others)), k] < LANE_WIDTH * 0.6
        for j, kk in zip(others[near], k[near]):
            g = route.s[lo + kk] - s - 0.5 * (veh["size"][1] + vehicles[j]["size"][1])
            if g < gap:
                gap = g
                v_lead = max(vehicles[j]["v"] * math.cos(hdg[j] - route.heading[lo + kk]), 0.0)
        if len(ped_pos):
            dp = np.linalg.norm(ped_pos[:, None, :] - window[None], axis=2)
            kp = np.argmin(dp, axis=1)
            hit = dp[np.arange(len(ped_pos)), kp] < LANE_WIDTH * 0.8
            for kk in kp[hit]:
                g = route.s[lo + kk] - s - 0.5 * veh["size"][1] - 1.0
                if g < gap:
                    gap, v_lead = g, 0.0
    # stop before a crossing a pedestrian is stepping onto; once on the road the corridor check above
    # keeps vehicles stopped until the pedestrian has left their path
    for ci, s_in, _ in route.crossings:
        if ci in busy_crossings and s_in - 1.0 > s + 0.5 * veh["size"][1] - 0.5:
            g = s_in - 1.0 - s - 0.5 * veh["size"][1]
            if g < gap:
                gap, v_lead = g, 0.0
    free = 1.0 - (v / v_des) ** 4
    if not np.isfinite(gap):
        return IDM_ACCEL * free
    gap = max(gap, 0.1)
    s_star = IDM_GAP * 0.5 + v * IDM_HEADWAY + v * (v - v_lead) / (2 * math.sqrt(IDM_ACCEL * IDM_DECEL))
    return max(IDM_ACCEL * (free - (max(s_star, 0.0) / gap) ** 2), -8.0)


# --------------------------------------------------------------------------------------------------
# Pedestrians and parked cars
# --------------------------------------------------------------------------------------------------


def _schedule_pedestrians(town, params, rng, ego_route, ego_s0, ego_speed, duration) -> list:
    """Pedestrians crossing at crossings the ego will reach, timed to make it stop, plus others."""
    steps = int(round(duration * SIM_HZ)) + 1
    times = np.arange(steps) / SIM_HZ
    ahead = [(ci, s_in) for ci, s_in, _ in ego_route.crossings if 8.0 < s_in - ego_s0 < ego_speed * duration * 0.9]
    rng.shuffle(ahead)
    peds = []
    for k in range(params.num_pedestrians):
        timed = k < len(ahead) and k < max(params.num_pedestrians // 2, 1)
        if not timed and (not town.crossings or rng.random() < 0.4):
            peds.append(_sidewalk_walker(town, rng, ego_route, times))
            continue
        if timed:
            ci, s_in = ahead[k]
            t_arrive = (s_in - ego_s0) / ego_speed
            t_start = max(t_arrive - rng.uniform(1.0, 4.0), 0.5)
        else:
            ci = int(rng.integers(len(town.crossings)))
            t_start = rng.uniform(0.0, duration)
        c = town.crossings[ci]
        across = np.array([c.road_dir[1], -c.road_dir[0]]) * (1 if rng.random() < 0.5 else -1)
        speed = rng.uniform(1.1, 1.6)
        lateral = rng.uniform(-1.2, 1.2) * c.road_dir
        kerb = c.centre + lateral - across * (c.half_length + 1.5)
        far = c.centre + lateral + across * (c.half_length + 1.5)
        approach = kerb - c.road_dir * rng.choice([-1, 1]) * rng.uniform(4.0, 12.0) - across * 1.5
        leave = far + c.road_dir * rng.choice([-1, 1]) * rng.uniform(4.0, 12.0) + across * 1.5
        t_cross = np.linalg.norm(far - kerb) / speed
        t0 = t_start - np.linalg.norm(kerb - approach) / speed
        t_end = t_start + t_cross
        t3 = t_end + np.linalg.norm(leave - far) / speed
        key_t = np.array([t0, t_start, t_end, t3])
        key_p = np.stack([approach, kerb, far, leave])
        xy = np.stack([np.interp(times, key_t, key_p[:, 0]), np.interp(times, key_t, key_p[:, 1])], axis=1)
        peds.append(dict(_pedestrian_motion(xy, rng), crossing=ci, busy=(t_start, t_end)))
    return peds


def _sidewalk_walker(town: Town, rng, ego_route: _Route, times: np.ndarray) -> dict:
    """A pedestrian walking along a sidewalk near the ego's route (never on the road)."""
    line = town.sidewalk_lines[int(rng.integers(len(town.sidewalk_lines)))]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
    near = np.argmin(np.linalg.norm(line[:, None] - ego_route.pts[None, ::20], axis=2).min(axis=1))
    start = s[near] + rng.uniform(-30.0, 30.0)
    pos = (start + rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 1.6) * times) % s[-1]
    xy = np.stack([np.interp(pos, s, line[:, 0]), np.interp(pos, s, line[:, 1])], axis=1)
    return dict(_pedestrian_motion(xy, rng), crossing=-1, busy=(-1.0, -1.0))


def _pedestrian_motion(xy: np.ndarray, rng) -> dict:
    """Heading and speed from positions (heading held while standing), and a body size."""
    steps = len(xy)
    vel = np.gradient(xy, axis=0) * SIM_HZ
    spd = np.linalg.norm(vel, axis=1)
    yaw = np.arctan2(vel[:, 1], vel[:, 0])
    moving = spd > 0.05
    if moving.any():  # hold the heading while standing
        idx = np.maximum.accumulate(np.where(moving, np.arange(steps), 0))
        idx[: int(np.argmax(moving))] = int(np.argmax(moving))
        yaw = yaw[idx]
    size = np.array([rng.uniform(0.55, 0.75), rng.uniform(0.6, 0.8), rng.uniform(1.55, 1.9)])
    return dict(xy=xy, yaw=np.unwrap(yaw), speed=spd, size=size)


def _parked_cars(town: Town, params: SynthParams, rng, ego_route: _Route, steps: int) -> list:
    if params.num_parked == 0 or len(town.parking_spots) == 0:
        return []
    d = np.min(np.linalg.norm(town.parking_spots[:, None, :2] - ego_route.pts[None, ::10], axis=2), axis=1)
    order = np.argsort(d, kind="stable")[: params.num_parked]
    cars = []
    for k in sorted(order):
        x, y, yaw = town.parking_spots[k]
        yaw = yaw + (math.pi if rng.random() < 0.5 else 0.0)
        size = np.array([rng.uniform(1.75, 2.0), rng.uniform(4.2, 4.9), rng.uniform(1.45, 1.75)])
        cars.append(Agent(kind="car", size=size, xy=np.tile([x, y], (steps, 1)), yaw=np.full(steps, yaw),
                          speed=np.zeros(steps), color=_vehicle_colour(rng, "car"), parked=True))
    return cars


def _vehicle_colour(rng, kind: str) -> np.ndarray:
    palette = np.array([[200, 30, 30], [30, 60, 170], [230, 230, 230], [20, 20, 22], [140, 140, 145],
                        [200, 160, 30], [40, 120, 60], [110, 20, 40]], np.uint8)
    if kind == "truck":
        return np.array([235, 235, 225], np.uint8)
    return palette[int(rng.integers(len(palette)))]


def _clothes_colour(rng) -> np.ndarray:
    palette = np.array([[200, 40, 40], [40, 40, 160], [230, 200, 40], [30, 150, 60], [240, 120, 20],
                        [180, 40, 160]], np.uint8)
    return palette[int(rng.integers(len(palette)))]
