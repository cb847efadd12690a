"""Meta-learning: MAML and Meta-SGD (maml: pure inner / outer functions; train: the meta-step's pieces;
evaluate: fine-tuning episodes on held-out classes; conv: convolutions that vmap over kernels; method: all of
it as the trainer's `maml` method)."""
