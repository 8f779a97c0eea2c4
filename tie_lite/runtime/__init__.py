"""The runtime: checkpoints, loading and quantization, weights, the memory plan, the scheduler that keeps
members within it, drivers that answer the engine's forwards (one at a time, batched, side by side, Ray)."""
