"""Decoding: the block-diffusion and semi-autoregressive Sampler (`sampler`), and loading a
checkpoint and rendering prompts for it (`model`). The block KV cache is an attention mechanism
and lives with the model (`models/kv_cache.py`)."""
