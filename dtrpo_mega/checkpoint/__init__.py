"""Checkpoints: model weights (`model`), training state (`trainer`), checksums and named I/O
errors (`integrity`), and the restricted unpickling of distributed-checkpoint metadata
(`safe_pickle`)."""
