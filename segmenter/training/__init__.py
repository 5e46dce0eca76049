"""Training, continual learning and pruning of multi-head models, and their evaluation (research tools)."""
