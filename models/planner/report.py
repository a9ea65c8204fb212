"""Open-loop planning report: the planner and its baselines on the same validation samples and code path.

Rows (each scored by :func:`models.planner.metrics.all_planning_metrics` under the UniAD and ST-P3 conventions):

    planner               ViT Planner V2 (the stage's best checkpoint, chosen on held-out train scenes)
    planner_fixed_image   the same planner with every sample's images replaced by one fixed sample's (the image
                          ablation: how much of the planner's accuracy comes from what it sees)
    ego_mlp               the Ego-MLP baseline trained in the same stage (best checkpoint, chosen likewise)
    constant_velocity     last displacement of the ego history, extrapolated (no learning)
    constant_turn_rate    CTRV from the last two history poses (no learning)
"""
from __future__ import annotations

import numpy as np

from models.planner.baselines import constant_velocity, constant_velocity_yaw_rate
from models.planner.metrics import CONVENTIONS, all_planning_metrics

BASELINE = "constant_velocity"
IMAGE_ABLATION = "planner_fixed_image"


class FixedImages:
    """The samples with every item's camera frames replaced by those of sample ``index`` (ego status, history and
    targets unchanged): the planner's image ablation."""

    def __init__(self, samples, index: int = 0):
        self.samples, self.frames = samples, samples[index]["frames"]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return {**self.samples[i], "frames": self.frames}


def image_ablation(rows: dict) -> dict:
    """Per convention, average L2 of the planner on fixed images minus on its own images (m; > 0: images help)."""
    return {conv: rows[IMAGE_ABLATION][conv]["l2_avg"] - rows["planner"][conv]["l2_avg"]
            for conv in rows["planner"]}


def perception_errors(pred: np.ndarray, target: np.ndarray) -> dict:
    """The perception head's (S, K) outputs (unstandardised) against the corridor targets (S, K)
    (models/planner/perception.py): gap MAE (m), presence accuracy (threshold 0.5), lead-speed MAE (m/s)."""
    from models.planner.perception import CORRIDOR_M, SPEED_SCALE

    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    return {"gap_mae_m": float(np.abs(pred[:, 0] - target[:, 0]).mean() * CORRIDOR_M),
            "present_accuracy": float(((pred[:, 1] > 0.5) == (target[:, 1] > 0.5)).mean()),
            "lead_speed_mae_mps": float(np.abs(pred[:, 2] - target[:, 2]).mean() * SPEED_SCALE)}


def kinematic_predictions(cache_arrays: dict, steps: int, dt: float) -> dict[str, np.ndarray]:
    """The two learning-free baselines from the cache arrays -> name -> (S, steps, 2)."""
    args = (cache_arrays["ego_history"], cache_arrays["ego_history_valid"], cache_arrays["ego_status"])
    return {"constant_velocity": constant_velocity(*args, steps=steps, dt=dt),
            "constant_turn_rate": constant_velocity_yaw_rate(*args, steps=steps, dt=dt)}


def planning_report(predictions: dict[str, np.ndarray], cache_arrays: dict) -> dict:
    """name -> (S, F, 2) predictions -> {"rows": {name: {convention: metrics}}, "beats_constant_velocity": ...}.

    ``beats_constant_velocity[name][convention]``: the row's average L2 is strictly below constant velocity's."""
    a = cache_arrays
    gt = a["future_waypoints"][..., :2]
    rows = {}
    for name, pred in predictions.items():
        flat = all_planning_metrics(pred, gt, a["future_valid"], a["agent_boxes"], a["agent_valid"],
                                    a["agent_class"], a["ego_history_valid"])
        rows[name] = {conv: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(conv + "/")}
                      for conv in CONVENTIONS}
    out: dict = {"rows": rows}
    if BASELINE in rows:
        out["beats_constant_velocity"] = {
            name: {conv: bool(rows[name][conv]["l2_avg"] < rows[BASELINE][conv]["l2_avg"]) for conv in CONVENTIONS}
            for name in rows if name != BASELINE}
    return out
