"""Entry points: the training loop, --mode=evaluate, sweeps, config validation and command dispatch."""
