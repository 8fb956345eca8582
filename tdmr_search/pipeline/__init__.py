"""The TDMR pipeline and its baselines: stage 1, stage 2, training loop and results."""
