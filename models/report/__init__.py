"""The pipeline's one report: every stage's headline beside its baselines, verdicts and key figures (stage report)."""
