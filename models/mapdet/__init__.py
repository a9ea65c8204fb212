"""Vectorised map detector: Q-Former + frozen language model + map queries + map decoder."""
