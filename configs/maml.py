r"""MAML (Finn, Abbeel & Levine 2017): meta-batches of N-way K-shot tasks; per task, `loss.inner_steps` gradient
steps on its support set, the loss of the adapted network on its queries, and one outer Adam step on the
meta-parameters with the gradient through the inner steps (second-order; `loss.first_order=True` holds the
inner gradients constant; `loss.learn_inner_lr=True` is Meta-SGD, Li et al. 2017). BatchNorm uses the task's
batch statistics in training and test alike, as in the paper's code. Held-out evaluation fine-tunes on each
episode's support set (`loss.eval_inner_steps`) and scores its queries. See navee_jax/meta and docs/maml.md.

    python launch.py --config=configs/maml.py --workdir=runs/maml

On Omniglot, all ten background-small alphabets (242 characters: 200 train, 42 unseen are held out; Conv-4
at 28x28; the paper's 5-way settings: one inner step of 0.4 in training, three at test), shortened for a
2-core CPU (width 32, 16 tasks a meta-batch, 400 meta-steps):

    python launch.py --config=configs/maml.py:omniglot_all --workdir=runs/maml-omniglot \
      --config.model.width=32 --config.sampler.tasks_per_batch=16 --config.train.num_epochs=16 \
      --config.train.steps_per_epoch=25

trains in 9 min (475 s of it the 400 meta-steps, on a shared 2-core CPU) and ends with

    final held-out mAP 0.3168 (at initialisation 0.1281) over 420 queries
    4-way 1-shot 1-NN accuracy 0.7815 +- 0.0339 (50 episodes; 0.4495 at initialisation)
    4-way 5-shot 1-NN accuracy 0.8420 +- 0.0321 (50 episodes; 0.5935 at initialisation)
    5-way 1-shot MAML fine-tuned accuracy 0.8324 +- 0.0285 (50 episodes; 0.3520 at initialisation)
    5-way 5-shot MAML fine-tuned accuracy 0.8592 +- 0.0335 (50 episodes; 0.3788 at initialisation)

(mAP and 1-NN on Conv-4's features; "MAML fine-tuned": three inner steps on each episode's support set, then
its queries scored). 20-way: add --config.sampler.ways=20 (the head follows); docs/maml.md has both runs, the
600-episode evaluation and the paper's figures. Without overrides the run is the paper's 5-way setting (width
64, 32 tasks a meta-batch), about 2 s a meta-step on that CPU.
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = common.get_config(variant)
    c.sampler.kind = "tasks"
    # Digits hold out 4 classes, so its tasks are 4-way; the others are the paper's 5-way.
    c.sampler.ways = 4 if variant == "digits" else 5
    c.sampler.shots = 1
    c.sampler.queries = 1  # the paper's code: as many query images per class as support images
    c.sampler.tasks_per_batch = 32  # the paper's meta-batch for 5-way Omniglot (16 for 20-way)
    c.model.backbone = "conv4"
    c.model.embed_dim = c.sampler.get_ref("ways")  # the head: one logit per class of a task
    c.model.normalize = False
    c.method = "maml"  # navee_jax.meta.method; its settings live in c.loss
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "maml"
    c.loss.inner_steps = 1  # the paper: 1 for 5-way Omniglot, 5 for 20-way
    c.loss.inner_lr = 0.4  # the paper: 0.4 for 5-way Omniglot, 0.1 for 20-way
    c.loss.eval_inner_steps = 3  # the paper: 3 for 5-way Omniglot, 5 for 20-way
    c.loss.first_order = False  # True: first-order MAML (inner gradients held constant)
    c.loss.learn_inner_lr = False  # True: Meta-SGD, one learned step size per parameter, starting at inner_lr
    c.loss.params_lr_multiplier = 1.0  # Meta-SGD's step sizes train at this multiple of optim.lr
    c.optim.lr = 1e-3  # the paper: Adam, 1e-3 (meta step size beta)
    c.optim.decay_every_epochs = 1000  # no decay in the paper
    c.train.num_epochs = 10
    c.eval.shots = (1, 5)
    return c
