"""The channel-pruning baseline: Torch-Pruning students against the compress study (issue 31 item 3)."""
