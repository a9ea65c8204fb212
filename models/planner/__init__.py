"""Open-loop planning: metrics (UniAD / ST-P3 conventions), ego-status baselines and the planner model."""
