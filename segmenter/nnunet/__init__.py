"""nnU-Net v2 inference without nnunetv2: plans, network, preprocessing, sliding window, export, import."""
