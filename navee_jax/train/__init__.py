"""One trainer for every method: sharded pure steps, checkpoints, metrics."""
