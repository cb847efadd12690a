r"""Train and evaluate a few-shot embedding: the one entry point for every method.

    python launch.py --config=configs/triplet.py[:variant] --workdir=runs/triplet [--config.a.b=value ...]
    python launch.py --config=... --workdir=runs/sweep --sweep="optim.lr=[5e-5, 1e-4]" [--sweep=...]

    python launch.py --config=... --workdir=runs/triplet --mode=evaluate [--checkpoint=best|latest|<step>|none]

With --sweep, every setting of the grid trains into its own sub-workdir and a table of the best
held-out mAP per setting ends the run (navee_jax.launcher.sweep). --mode=evaluate evaluates the workdir's
checkpoint beside the initial network and pixel baselines into <workdir>/report/ (navee_jax.launcher.evaluate).

Bad input (unknown config key, wrong type or value, missing data, incompatible checkpoint, NaN loss)
ends with one line on stderr naming the culprit, and exit status 2. One run at a time holds a workdir
(workdir/lock). Ctrl-C or SIGTERM ends with one line naming the last saved checkpoint, exit status 130 / 143.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from navee_jax.cli import exit_on_interrupt, fail, parse_flags, resume_hint  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/triplet.py[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and TensorBoard logs (default runs/<config>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "Train (and evaluate), or only evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "--mode=evaluate: best, latest, a saved step, or none "
                                  "(only the network at initialisation and the baselines).")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "key=[v1, v2, ...]: train every setting of the grid of these "
                                   "overrides into <workdir>/<setting>/ and tabulate held-out mAP.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; overrides look like --config.train.num_epochs=5")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and TF are chatty at INFO
    config = _CONFIG.value
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    workdir = _WORKDIR.value or os.path.join("runs", name)

    with exit_on_interrupt(lambda: resume_hint(workdir, _MODE.value, bool(_SWEEP.value))):
        from navee_jax.launcher.command import Command, run_command

        run_command(Command(config, workdir, _MODE.value, _CHECKPOINT.value, tuple(_SWEEP.value)))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
