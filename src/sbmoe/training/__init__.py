"""Training: hard negatives, losses, and the training loop."""
