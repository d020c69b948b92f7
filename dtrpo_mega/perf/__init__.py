"""What a run costs: saved activations (measured), memory and FLOPs (estimated)."""
