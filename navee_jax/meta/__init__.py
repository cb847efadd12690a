"""Meta-learning: MAML and Meta-SGD (maml: pure inner / outer functions; train: the meta-step in the shared
trainer; evaluate: fine-tuning episodes on held-out classes; conv: convolutions that vmap over kernels)."""
