"""What a registered model is: its manifest (parts, labels, checksums) and its declared model-level steps."""
