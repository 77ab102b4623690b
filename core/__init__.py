"""FML core: the vertical-agnostic federated meta-learning engine (no dataset file I/O here)."""
