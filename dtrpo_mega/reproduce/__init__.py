"""The small-scale reproduction (examples/reproduce_small): SFT from scratch on a verifiable task,
self-sampled preference pairs, dTRPO against its peers under one step budget, held-out accuracy."""
