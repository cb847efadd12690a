"""navee_jax.launcher.config_check: every key of every shipped config has a rule, and each rule turns its bad
values into one line naming the key, before any work. The full table runs in-process through the real flag
parser (ml_collections' config_flags on a fresh FlagValues, then check_config, as launch.py does); a few cases run
launch.py itself, for the whole path to stderr and the exit status."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from configs.classifier import VARIANTS
from conftest import REPO, run_launch
from navee_jax import cli
from navee_jax.launcher import command
from navee_jax.launcher.config_check import RULES, check_config, leaf_keys, lookup
from navee_jax.errors import UserError

# config_flags loads config files with the deprecated importlib load_module(): one warning per parse.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

EXPERIMENTS = ("triplet", "contrastive", "protonet", "multi_similarity", "proxy_anchor", "maml", "siamese")
SPECS = [f"configs/{e}.py" + (f":{v}" if v else "") for e in EXPERIMENTS for v in common.VARIANTS] + \
    [f"configs/classifier.py:{v}" if v else "configs/classifier.py" for v in VARIANTS]


@dataclasses.dataclass(frozen=True)
class Py:
    """A bad value set directly in Python (bypassing the flag parser and ml_collections' type safety), as a
    config built in code could hold it."""

    value: Any


# Bad values of every key: strings go through the command line (--config.KEY=VALUE), Py(...) are set directly.
# Each applicable kind: wrong type, zero, negative, out of range, unknown enum, non-finite.
BAD: dict[str, list[Any]] = {
    "seed": ["-1", "1.5", str(2**63), Py("0")],
    "method": ["nonexistent", Py(1)],
    "data.source": ["webdataset", "tfds:", Py(None)],
    "data.root": [Py(3), Py(("a",))],
    "data.group_level": ["-2", "x"],
    "data.label_column": [Py(3)],
    "data.group_column": [Py(3)],
    "data.label_levels": ["(3,)", Py("masterCategory")],
    "data.duplicates": ["drop", Py(True)],
    "data.tfds_split": [Py(0)],
    "data.tfds_label_key": [Py(None)],
    "data.tfds_group_key": [Py(1)],
    "data.tfds_data_dir": [Py(1)],
    "data.image_size": ["0", "-4", "abc", Py(32.0), Py(True)],
    "data.resize": ["centre", Py(1)],
    "data.crop_fraction": ["0", "1.5", "x"],
    "data.interpolation": ["nearest", Py(3)],
    "data.fill": ["-0.1", "1.5", "nan", "white"],
    "data.grayscale": ["maybe", Py(1), Py("True")],
    "data.binarize": ["maybe", Py(0)],
    "data.rotated_classes": ["(45,)", Py((90, "180"))],
    "data.flip": ["maybe", Py(None)],
    "data.rotation_deg": ["-5", "inf", Py("15")],
    "data.translate_px": ["-1", "nan"],
    "data.crop_scale_min": ["0", "-0.5", "1.5"],
    "data.color_jitter": ["-0.1", "1.5"],
    "data.affine": ["maybe", Py(1)],
    "data.mean": ["abc", "0.5", "(0.5, 0.5)", "(0.5, 'a', 0.5)", Py(0.5)],
    "data.std": ["0", "(0.2, 0.0, 0.2)", "(0.2, -1, 0.2)", "abc"],
    "split.mode": ["random", Py(0)],
    "split.heldout_classes": ["6", "(6, 7)", Py("6789")],
    "split.num_heldout_classes": ["-1", "x"],
    "split.heldout_groups": ["(1,)", Py("Greek")],
    "split.train_groups": ["(1,)", Py("Apparel")],
    "split.num_heldout_groups": ["-1"],
    "split.partial_group": [Py(1)],
    "split.support_fraction": ["0", "1.0", "1.5", "-0.5", "half"],
    "split.support_count": ["-1"],
    "split.min_images_per_class": ["1", "0", "-3"],
    "split.test_fraction": ["0", "1", "1.5"],
    "split.seed": ["-2", "1.5"],
    "split.validation_fraction": ["1", "-0.1"],
    "model.backbone": ["resnet34", Py(None)],
    "model.width": ["0", "-8"],
    "model.tta_shift_px": ["-1", "1.5"],
    "top.views": ["0", "1.5"],
    "top.cache_dir": [Py(None), Py(3)],
    "model.pool_grid": ["0", "1.5"],
    "model.num_stages": ["0", "5", "2.5"],
    "model.block_widths": ["(64, 64)", "(64, 64, 0, 64)", "(64, 64, 'a', 64)", Py(64)],
    "model.global_pool": ["1", "'yes'"],
    "model.whiten": ["-0.5", "1.5", "'pca'"],
    "model.whiten_images": ["1", "0", "2.5"],
    "model.in_channels": ["2", "0", Py(True)],
    "model.remove_top_layers": ["-1", "8"],
    "model.pretrained": [Py(None), Py(1)],
    "model.compute_dtype": ["float16", Py(32)],
    "model.embed_dim": ["-1", "x"],  # 0 is valid: the backbone's features
    "model.normalize": ["maybe", Py(1)],
    "model.frozen_batchnorm": ["maybe", Py(1)],
    "model.frozen_stages": ["(1,)", "layer9", "features.0", Py("layer1")],
    "model.head_batchnorm": ["maybe", Py(1)],
    "model.head_hidden": ["-1", "1.5"],
    "model.train_last_blocks": ["-2", "1.5"],
    "model.init_workdir": [Py(None), Py(2)],
    "sampler.kind": ["random", Py(1)],
    "sampler.classes_per_batch": ["0", "-2"],
    "sampler.images_per_class": ["0"],
    "sampler.ways": ["1", "0", "-5"],
    "sampler.shots": ["0"],
    "sampler.queries": ["0"],
    "sampler.tasks_per_batch": ["0", "-1", Py(2.0)],
    "sampler.tuples_per_batch": ["0"],
    "sampler.p_same": ["-0.1", "1.5", "nan"],
    "sampler.batch_size": ["0", "-1"],
    "optim.lr": ["-1", "0", "nan", "inf"],
    "optim.weight_decay": ["-0.1"],
    "optim.decay_every_epochs": ["0", "-1"],
    "optim.decay_factor": ["0", "1.5", "-0.1"],
    "train.num_epochs": ["0", "-1"],
    "train.steps_per_epoch": ["-1"],
    "train.log_every": ["0"],
    "train.keep_checkpoints": ["0"],
    "eval.batch_size": ["0", "-256"],
    "eval.ways": ["1", "0"],
    "eval.shots": ["abc", "()", "0", "(1, 0)", "(1, 'a')", "1.5", Py(5)],
    "eval.queries_per_class": ["0"],
    "eval.episodes": ["0"],
    "eval.grid_ways": ["1", "()", "(2, 'x')"],
    "eval.grid_shots": ["0", "()"],
    "eval.standard_episodes": ["0"],
    "eval.classifiers": ["svm", "(1,)"],
    "eval.baselines": ["sift", "hog"],
    "eval.metric": ["manhattan", Py(None)],
    "loss.name": ["arcface", Py(None)],
    "loss.margin": ["-0.2", "nan"],
    "loss.miner": ["hardest", Py(None)],
    "loss.top_fraction": ["0", "1.5", "-1"],
    "loss.metric": ["manhattan", Py(1)],
    "loss.p_mining": ["0", "2"],
    "loss.alpha": ["0", "-2"],
    "loss.beta": ["0"],
    "loss.base": ["nan", "inf", Py("0.5")],
    "loss.epsilon": ["-0.1"],
    "loss.delta": ["-0.1"],
    "loss.params_lr_multiplier": ["-1"],
    "loss.inner_steps": ["0", "-1", Py(1.5)],
    "loss.inner_lr": ["0", "-0.4", "nan", Py("0.4")],
    "loss.eval_inner_steps": ["0", Py(None)],
    "loss.first_order": ["maybe", Py(1)],
    "loss.learn_inner_lr": ["maybe"],
    "loss.label_smoothing": ["1", "-0.1"],
}

# Keys whose ranges navee_jax.meta.train.check_config owns (its messages read "loss.inner_steps=0: ..."), checked
# on the MAML config: elsewhere nothing reads them.
MAML_OWNED = ("sampler.tasks_per_batch", "loss.inner_steps", "loss.inner_lr", "loss.eval_inner_steps")

# Rules between keys: (config, other overrides, the key the message must name, message in check_config's form).
CROSS_CASES: list[tuple[str, list[str], str, bool]] = [
    ("configs/triplet.py:digits", ["--config.sampler.kind=episodes"], "sampler.kind", True),
    ("configs/protonet.py:digits", ["--config.sampler.kind=pk"], "sampler.kind", True),
    ("configs/multi_similarity.py:digits", ["--config.sampler.kind=pairs"], "sampler.kind", True),
    ("configs/maml.py:digits", ["--config.sampler.kind=pk"], "sampler.kind", True),
    ("configs/triplet.py:digits", ["--config.model.block_widths=(64, 64, 128, 128)"], "model.block_widths", True),
    ("configs/triplet.py:digits", ["--config.model.global_pool=True"], "model.global_pool", True),
    ("configs/maml.py:digits", ["--config.model.whiten=0.5"], "model.whiten", True),
    ("configs/siamese.py:digits", ["--config.model.whiten=0.5"], "model.whiten", True),
    ("configs/triplet.py:omniglot", ["--config.model.tta_shift_px=14"], "model.tta_shift_px", True),
    ("configs/triplet.py:omniglot", ["--config.model.pool_grid=2"], "model.pool_grid", True),
    ("configs/triplet.py:omniglot", ["--config.model.num_stages=3"], "model.num_stages", True),
    ("configs/classifier.py:fashion", ["--config.split.train_groups=('Apparel',)"], "split.train_groups", True),
    ("configs/triplet.py:digits", ["--config.data.source=folder"], "data.root", True),
    ("configs/triplet.py:digits", ["--config.data.source=styles_csv", "--config.data.root=/data",
                            "--config.data.label_column="], "data.label_column", True),
    ("configs/triplet.py:digits", ["--config.data.source=tfds:omniglot", "--config.data.tfds_split="],
     "data.tfds_split", True),
    ("configs/triplet.py:digits", ["--config.data.source=tfds:omniglot", "--config.data.tfds_label_key="],
     "data.tfds_label_key", True),
    ("configs/triplet.py:digits", ["--config.split.mode=groups"], "split.mode", True),
    ("configs/triplet.py:omniglot", ["--config.split.mode=partial"], "split.mode", True),
    ("configs/triplet.py:digits", ["--config.data.source=styles_csv", "--config.data.root=/data",
                            "--config.split.mode=groups"], "split.mode", True),
    ("configs/triplet.py:digits", ["--config.split.heldout_classes=()", "--config.split.num_heldout_classes=0"],
     "split.num_heldout_classes", True),
    ("configs/triplet.py:omniglot_all", ["--config.split.mode=partial", "--config.split.partial_group=x",
                                         "--config.split.num_heldout_classes=0"], "split.num_heldout_classes", True),
    ("configs/triplet.py:omniglot_all", ["--config.split.mode=groups", "--config.split.num_heldout_groups=0"],
     "split.num_heldout_groups", True),
    ("configs/triplet.py:omniglot_all", ["--config.split.mode=partial"], "split.partial_group", True),
    ("configs/protonet.py:digits", ["--config.split.support_count=0", "--config.split.support_fraction=1.0"],
     "split.support_fraction", True),
    ("configs/triplet.py:digits", ["--config.model.in_channels=1"], "model.in_channels", True),
    ("configs/triplet.py:omniglot", ["--config.data.image_size=8"], "data.image_size", True),
    ("configs/triplet.py:digits", ["--config.model.backbone=koch"], "data.image_size", True),
    ("configs/triplet.py:digits", ["--config.model.backbone=vgg16",
     "--config.data.image_size=16"], "data.image_size", True),
    ("configs/triplet.py:digits", ["--config.data.image_size=1"], "data.image_size", True),  # the HOG baseline
    ("configs/triplet.py:digits", ["--config.model.backbone=vgg16", "--config.model.remove_top_layers=7",
                            "--config.model.frozen_stages=classifier.0"], "model.frozen_stages", True),
    ("configs/triplet.py:omniglot", ["--config.model.frozen_stages=layer1"], "model.frozen_stages", True),
    ("configs/triplet.py:digits", ["--config.model.embed_dim=0", "--config.model.head_hidden=64"],
     "model.head_hidden", True),
    ("configs/triplet.py:digits", ["--config.model.train_last_blocks=2"], "model.train_last_blocks", True),
    ("configs/triplet.py:digits", ["--config.model.backbone=vit_s16", "--config.model.train_last_blocks=13"],
     "model.train_last_blocks", True),
    ("configs/triplet.py:digits", ["--config.model.backbone=vit_s16", "--config.model.train_last_blocks=2",
                                   "--config.model.frozen_stages=patch"], "model.train_last_blocks", True),
    ("configs/triplet.py:digits", ["--config.model.init_workdir=/no/such/run"], "model.init_workdir", True),
    ("configs/maml.py:digits", ["--config.model.init_workdir=runs"], "model.init_workdir", True),
    ("configs/top_tune.py:digits", ["--config.model.backbone=vit_s16", "--config.model.train_last_blocks=2"],
     "model.frozen_stages / model.train_last_blocks", False),
    # MAML's own rules: navee_jax.meta.train.check_config's messages
    ("configs/maml.py:digits", ["--config.model.backbone=resnet18"], "model.backbone", False),
    ("configs/maml.py:digits", ["--config.model.normalize=True"], "model.normalize", False),
    ("configs/maml.py:digits", ["--config.model.frozen_batchnorm=True"], "model.frozen_batchnorm", False),
    ("configs/maml.py:digits", ["--config.model.frozen_stages=blocks"], "model.frozen_stages", False),
    ("configs/maml.py:digits", ["--config.model.pretrained=conv4.safetensors"], "model.pretrained", False),
    ("configs/maml.py:digits", ["--config.model.tta_shift_px=1"], "model.tta_shift_px", False),
]

# Settings that must stay valid: the rules are not stricter than the code.
GOOD_CASES: list[tuple[str, list[str]]] = [
    ("configs/triplet.py:digits", ["--config.split.support_count=5", "--config.split.support_fraction=1.0"]),
    ("configs/triplet.py:digits", ["--config.split.support_count=5", "--config.split.support_fraction=0"]),
    ("configs/triplet.py:digits", ["--config.model.frozen_stages=('conv1', 'bn1', 'layer1.0')"]),
    ("configs/triplet.py:digits", ["--config.model.backbone=vgg16", "--config.model.frozen_stages=features.0"]),
    ("configs/triplet.py:digits", ["--config.model.backbone=koch", "--config.data.image_size=105"]),
    ("configs/triplet.py:digits", ["--config.model.backbone=vit_s16", "--config.model.train_last_blocks=0"]),
    ("configs/top_tune.py:digits", ["--config.model.head_hidden=512"]),
    ("configs/triplet.py:digits", ["--config.model.in_channels=1", "--config.data.grayscale=True"]),
    ("configs/maml.py:digits", ["--config.model.block_widths=(8, 8, 16, 16)"]),
    ("configs/triplet.py:omniglot", ["--config.model.tta_shift_px=13"]),
    ("configs/triplet.py:omniglot_all", ["--config.split.mode=groups"]),
    ("configs/triplet.py:omniglot_all", ["--config.split.mode=partial", "--config.split.partial_group=x"]),
    ("configs/triplet.py:digits", ["--config.data.source=tfds:omniglot", "--config.data.tfds_group_key=alphabet",
                            "--config.split.mode=groups"]),
    ("configs/triplet.py:digits", ["--config.data.source=styles_csv", "--config.data.root=/data"]),
    ("configs/triplet.py:digits", ["--config.eval.baselines=()", "--config.eval.classifiers=('knn', 'logreg', 'mlp')"]),
    ("configs/triplet.py:digits", ["--config.eval.shots=5",
     "--config.eval.metric=cosine", "--config.seed=1099511627776"]),
    ("configs/triplet.py:digits", ["--config.loss.miner=top_fraction", "--config.loss.top_fraction=1.0",
                            "--config.sampler.kind=triplets", "--config.loss.margin=0"]),
    ("configs/contrastive.py:digits", ["--config.sampler.kind=pk", "--config.loss.p_mining=1.0"]),
    ("configs/maml.py:digits", ["--config.sampler.ways=20", "--config.loss.learn_inner_lr=True"]),
]


def _spec_path(spec: str) -> str:
    return os.path.join(REPO, spec)


def _parse(spec: str, overrides: list[str]) -> tuple[ml_collections.ConfigDict | None, str | None]:
    """(config, None) as launch.py's flags give it, or (None, the one line cli.fail would print)."""
    values = flags.FlagValues()
    argv = ["launch.py", f"--config={_spec_path(spec)}", *overrides]
    # The override flags are defined from the command line: launch.py's is sys.argv, this one is argv.
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    try:
        values(argv)
    except Exception as e:  # as cli.parse_flags catches it
        return None, cli.explain_flag_error(argv, e)
    return values.config, None


def _set_unchecked(config: ml_collections.ConfigDict, key: str, value: Any) -> ml_collections.ConfigDict:
    """A copy without ml_collections' type safety, `key` set to `value`."""
    loose = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    *parents, leaf = key.split(".")
    node = loose
    for p in parents:
        node = node[p]
    node[leaf] = value
    return loose


def _error_line(config: ml_collections.ConfigDict) -> str:
    with pytest.raises(UserError) as raised:
        check_config(config)
    return str(raised.value)


@pytest.fixture
def launch_in_process(tmp_path, capsys, monkeypatch):
    """What launch.py does with parsed flags (navee_jax.launcher.command.run_command), in this process: returns the
    line it printed on stderr after asserting exit status 2, nothing else on stderr and no workdir."""
    def never_run(*args):
        raise AssertionError("a bad config reached the run")

    monkeypatch.setattr(command, "_dispatch", never_run)

    def launch(config: ml_collections.ConfigDict, mode: str = "train") -> str:
        workdir = tmp_path / "run"
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            command.run_command(command.Command(config, str(workdir), mode))
        err = capsys.readouterr().err
        assert exited.value.code == 2 and not workdir.exists(), err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        return err[len("error: "):].strip()

    return launch


def _all_keys() -> dict[str, list[str]]:
    """key -> the shipped configs (with variants) that have it."""
    keys: dict[str, list[str]] = {}
    for spec in SPECS:
        for key in leaf_keys(cli.load_config_file(_spec_path(spec))):
            keys.setdefault(key, []).append(spec)
    return keys


ALL_KEYS = _all_keys()
TABLE = [(key, bad) for key, values in BAD.items() for bad in values]


def test_every_config_key_has_a_rule_and_bad_values():
    missing_rule = [k for k in ALL_KEYS if k not in RULES]
    assert not missing_rule, f"key {missing_rule[0]} has no validation rule (navee_jax.launcher.config_check.RULES)"
    missing_case = [k for k in ALL_KEYS if not BAD.get(k)]
    assert not missing_case, f"key {missing_case[0]} has no bad values in BAD (tests/test_config_check.py)"
    # A rule or a case for a key no config has is a typo that would never check anything.
    assert not [k for k in RULES if k not in ALL_KEYS], "RULES name keys no config has"
    assert not [k for k in BAD if k not in ALL_KEYS], "BAD names keys no config has"


@pytest.mark.parametrize("spec", SPECS)
def test_shipped_configs_pass(spec):
    check_config(cli.load_config_file(_spec_path(spec)))


@pytest.mark.parametrize("key,bad", TABLE, ids=[f"{k}={b!r}" for k, b in TABLE])
def test_bad_value_is_one_line_naming_the_key(key, bad, launch_in_process):
    spec = "configs/maml.py:digits" if key in MAML_OWNED else ALL_KEYS[key][0]
    if isinstance(bad, Py):
        line = launch_in_process(_set_unchecked(cli.load_config_file(_spec_path(spec)), key, bad.value))
        assert line.startswith(f"config key {key!r} = {bad.value!r}: must be "), line
    else:
        config, parse_error = _parse(spec, [f"--config.{key}={bad}"])
        if parse_error is not None:  # a scalar of the wrong type: the flag parser's one line (cli.parse_flags)
            line = parse_error
            assert line.startswith(f"config key {key!r} expects ") and "\n" not in line, line
        else:
            line = launch_in_process(config)
            own = f"config key {key!r} = {lookup(config, key)!r}: "
            assert line.startswith(own) or (key in MAML_OWNED and line.startswith(f"{key}=")), line


@pytest.mark.parametrize("spec,overrides,key,own_form", CROSS_CASES,
                         ids=[f"{s.split('/')[-1]}:{' '.join(o)}" for s, o, _, _ in CROSS_CASES])
def test_cross_key_rule(spec, overrides, key, own_form):
    config, parse_error = _parse(spec, overrides)
    assert parse_error is None, parse_error
    line = _error_line(config)
    assert "\n" not in line and key in line, line
    if own_form:
        assert line.startswith(f"config key {key!r} = {lookup(config, key)!r}: "), line


@pytest.mark.parametrize("spec,overrides", GOOD_CASES, ids=[" ".join(o) for _, o in GOOD_CASES])
def test_valid_overrides_pass(spec, overrides):
    config, parse_error = _parse(spec, overrides)
    assert parse_error is None, parse_error
    check_config(config)


def test_missing_loss_keys():
    common_config = cli.load_config_file(_spec_path("configs/common.py"))
    assert _error_line(common_config).startswith("config key 'loss.name' is missing: ")
    config = cli.load_config_file(_spec_path("configs/triplet.py:digits"))
    del config.loss["miner"]
    assert _error_line(config) == "config key 'loss.miner' is missing: loss.name='triplet' needs it"


def test_first_problem_in_table_order():
    config, _ = _parse("configs/triplet.py:digits", ["--config.eval.batch_size=0", "--config.data.image_size=0"])
    assert _error_line(config).startswith("config key 'data.image_size' = 0: ")


# The listed defects through launch.py: flags -> check_config -> cli.fail, before any data or workdir file.
LAUNCH_CASES = [
    ("configs/triplet.py:digits", ["--config.data.image_size=0"], "data.image_size"),
    ("configs/triplet.py:digits", ["--config.eval.shots=abc"], "eval.shots"),
    ("configs/triplet.py:digits", ["--config.loss.miner=hardest"], "loss.miner"),
    ("configs/triplet.py:digits", ["--config.eval.metric=manhattan", "--mode=evaluate"], "eval.metric"),
    ("configs/contrastive.py:digits", ["--config.optim.lr=-1"], "optim.lr"),
    ("configs/protonet.py:digits", ["--config.split.support_fraction=1.5"], "split.support_fraction"),
    ("configs/maml.py:digits", ["--config.model.backbone=resnet18"], "model.backbone"),
]


@pytest.mark.parametrize("spec,overrides,key", LAUNCH_CASES, ids=[" ".join(o) for _, o, _ in LAUNCH_CASES])
def test_launch_fails_with_one_line(tmp_path, spec, overrides, key):
    workdir = tmp_path / "run"
    r = run_launch([f"--config={spec}", *overrides, f"--workdir={workdir}"], timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and key in errors[0], r.stderr
    assert not workdir.exists()
