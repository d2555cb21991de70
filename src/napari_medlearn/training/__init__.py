"""Training: the loop, datasets, losses and the presets that produce every shipped weight."""
