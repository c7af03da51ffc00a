"""vap.training: the VAP model (frozen video DiT + trainable MoT expert) and its distributed trainer."""
