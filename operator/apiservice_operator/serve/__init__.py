"""What the operator serves on its port: health, metrics and explain (rendered from the check
pipeline run traced)."""
