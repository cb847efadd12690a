r"""MAML (Finn, Abbeel & Levine 2017): meta-batches of N-way K-shot tasks; per task, `loss.inner_steps` gradient
steps on its support set, the loss of the adapted network on its queries, and one outer Adam step on the
meta-parameters with the gradient through the inner steps (second-order; `loss.first_order=True` holds the
inner gradients constant; `loss.learn_inner_lr=True` is Meta-SGD, Li et al. 2017). BatchNorm uses the task's
batch statistics in training and test alike, as in the paper's code. Held-out evaluation fine-tunes on each
episode's support set (`loss.eval_inner_steps`) and scores its queries. See navee_jax/meta and docs/maml.md.

    python launch.py --config=configs/maml.py --workdir=runs/maml

On Omniglot, all ten background-small alphabets (242 characters: 200 train, 42 unseen are held out; Conv-4
at 28x28; the paper's 5-way settings: one inner step of 0.4 in training, three at test, 32 tasks a step):

    python launch.py --config=configs/maml.py:omniglot_all --workdir=runs/maml-omniglot

MEASURED_BELOW
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = common.get_config(variant)
    c.sampler.kind = "tasks"
    # Digits hold out 4 classes, so its tasks are 4-way; Omniglot's are the paper's 5-way.
    c.sampler.ways = 5 if variant else 4
    c.sampler.shots = 1
    c.sampler.queries = 1  # the paper's code: as many query images per class as support images
    c.sampler.tasks_per_batch = 32  # the paper's meta-batch for 5-way Omniglot (16 for 20-way)
    c.model.backbone = "conv4"
    c.model.embed_dim = c.sampler.get_ref("ways")  # the head: one logit per class of a task
    c.model.normalize = False
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
