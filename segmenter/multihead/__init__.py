"""Multi-head models: shared encoder with per-task heads, crop cascade, body range and the SALT label tree."""
