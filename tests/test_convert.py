"""The weights converter: its command line end to end, load_pretrained, and one-line errors.

State dicts are random arrays under torchvision resnet18's names and shapes (taken from the
converter's own torch_shapes, and checked against torchvision where it is installed), so the
safetensors path needs neither torch nor torchvision.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from navee_jax.errors import UserError
from navee_jax.models.convert import convert, load_pretrained, read_state_dict, torch_shapes
from navee_jax.models.resnet import resnet18

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = [
    pytest.param("pth", marks=pytest.mark.skipif(not importlib.util.find_spec("torch"),
                                                 reason="needs PyTorch: pip install 'navee-jax[torch]'")),
    pytest.param("safetensors", marks=pytest.mark.skipif(not importlib.util.find_spec("safetensors"),
                                                         reason="needs safetensors: pip install 'navee-jax[torch]'")),
]


def _resnet18(num_classes: int = 0) -> nnx.Module:
    return nnx.eval_shape(lambda: resnet18(rngs=nnx.Rngs(0), num_classes=num_classes))


def _random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """resnet18 with its ImageNet head, plus the num_batches_tracked counters torch writes."""
    rng = np.random.default_rng(seed)
    state_dict = {name: rng.standard_normal(shape, dtype=np.float32)
                  for name, shape in torch_shapes(_resnet18(1000)).items()}
    for name in [n for n in state_dict if n.endswith("running_var")]:
        state_dict[name] = np.abs(state_dict[name]) + 0.5
        state_dict[name.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
    return state_dict


def _write(state_dict: dict[str, np.ndarray], path: str) -> str:
    if path.endswith(".pth"):
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
    else:
        from safetensors.numpy import save_file

        save_file(state_dict, path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "navee_jax.models.convert", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _params(model: nnx.Module) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))


def test_torch_shapes_are_torchvisions():
    torchvision = pytest.importorskip("torchvision", reason="needs torchvision: pip install 'navee-jax[torch]'")
    expected = {k: tuple(v.shape) for k, v in torchvision.models.resnet18().state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert torch_shapes(_resnet18(1000)) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_converts_and_load_pretrained_reads_both_the_directory_and_the_file(tmp_path, fmt):
    state_dict = _random_state_dict()
    src = _write(state_dict, str(tmp_path / f"resnet18.{fmt}"))
    out = str(tmp_path / "converted")
    result = _cli("--arch=resnet18", f"--src={src}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert "11,689,512 parameters" in result.stdout

    from_dir, from_file = resnet18(rngs=nnx.Rngs(1)), resnet18(rngs=nnx.Rngs(2))
    names = load_pretrained(from_dir, out)
    assert len(names) == len(load_pretrained(from_file, src))
    assert not any(n.startswith("fc") for n in names)  # the headless backbone skips the ImageNet head
    jax.tree.map(np.testing.assert_array_equal, _params(from_dir), _params(from_file))

    # Layouts: conv (O, I, H, W) -> (H, W, I, O); torchvision's downsample.0 / .1 are .conv / .bn.
    np.testing.assert_array_equal(from_dir.conv1.kernel[...], state_dict["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(from_dir.layer2[0].downsample.bn.var[...],
                                  state_dict["layer2.0.downsample.1.running_var"])
    with_head = _resnet18(1000)
    load_pretrained(with_head, out)
    np.testing.assert_array_equal(with_head.fc.kernel[...], state_dict["fc.weight"].T)


def test_converted_torchvision_weights_give_torchvisions_outputs(tmp_path):
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'navee-jax[torch]'")
    torchvision = pytest.importorskip("torchvision", reason="needs torchvision: pip install 'navee-jax[torch]'")
    torch.manual_seed(0)
    torch_model = torchvision.models.resnet18().eval()
    src = str(tmp_path / "resnet18.pth")
    torch.save(torch_model.state_dict(), src)
    out = str(tmp_path / "converted")
    assert _cli("--arch=resnet18", f"--src={src}", f"--out={out}").returncode == 0

    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    model = _resnet18(1000)
    load_pretrained(model, out)
    model.eval()
    actual = np.asarray(model(x.transpose(0, 2, 3, 1)))
    assert np.abs(actual - expected).max() / np.abs(expected).max() <= 1e-4  # relative error

    # model.num_stages=3: the same weights without layer4 (skipped, as a headless model skips fc), the output of
    # torchvision's third stage averaged over space.
    t = torch_model
    with torch.no_grad():
        stage3 = t.layer3(t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(torch.from_numpy(x))))))))
    expected = stage3.mean(dim=(2, 3)).numpy()
    three = resnet18(rngs=nnx.Rngs(0), num_stages=3)
    assert sorted(load_pretrained(three, src)) == sorted(n for n in torch_shapes(_resnet18(0)) if "layer4" not in n)
    three.eval()
    actual = np.asarray(three(x.transpose(0, 2, 3, 1)))
    assert actual.shape == (2, 256)
    assert np.abs(actual - expected).max() / np.abs(expected).max() <= 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_names_the_misshapen_tensor(tmp_path, fmt):
    state_dict = _random_state_dict()
    state_dict["layer3.1.conv2.weight"] = state_dict["layer3.1.conv2.weight"][:, :, :2]
    src = _write(state_dict, str(tmp_path / f"bad.{fmt}"))
    line = _one_line_error(_cli("--arch=resnet18", f"--src={src}", f"--out={tmp_path / 'out'}"))
    assert "'layer3.1.conv2.weight'" in line and "(256, 256, 2, 3)" in line and "(256, 256, 3, 3)" in line
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_names_the_missing_tensor(tmp_path, fmt):
    state_dict = _random_state_dict()
    del state_dict["layer2.0.downsample.1.running_mean"]
    src = _write(state_dict, str(tmp_path / f"bad.{fmt}"))
    line = _one_line_error(_cli("--arch=resnet18", f"--src={src}", f"--out={tmp_path / 'out'}"))
    assert "missing tensor 'layer2.0.downsample.1.running_mean'" in line


def test_cli_usage_errors_are_one_line(tmp_path):
    assert "--arch" in _one_line_error(_cli("--arch=resnet19", "--src=x.pth", f"--out={tmp_path}/o"))
    assert "x.pth: no such file" in _one_line_error(_cli("--arch=resnet18", "--src=x.pth", f"--out={tmp_path}/o"))


def test_load_pretrained_errors(tmp_path, monkeypatch):
    pytest.importorskip("safetensors", reason="needs safetensors: pip install 'navee-jax[torch]'")
    state_dict = _random_state_dict()
    state_dict["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
    src = _write(state_dict, str(tmp_path / "extra.safetensors"))
    with pytest.raises(UserError, match="unexpected tensor 'layer5.0.conv1.weight'"):
        load_pretrained(_resnet18(), src)
    with pytest.raises(UserError, match="not a checkpoint written by"):
        load_pretrained(_resnet18(), str(tmp_path))
    with pytest.raises(UserError, match="unknown weights format '.npz'"):
        load_pretrained(_resnet18(), _touch(tmp_path / "w.npz"))
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    with pytest.raises(UserError, match=r"needs PyTorch: pip install 'navee-jax\[torch\]'"):
        read_state_dict(_touch(tmp_path / "w.pth"))


def _touch(path) -> str:
    path.write_bytes(b"")
    return str(path)


def test_existing_out_directory_is_refused(tmp_path):
    pytest.importorskip("safetensors", reason="needs safetensors: pip install 'navee-jax[torch]'")
    src = _write(_random_state_dict(), str(tmp_path / "resnet18.safetensors"))
    line = _one_line_error(_cli("--arch=resnet18", f"--src={src}", f"--out={tmp_path}"))
    assert "already exists" in line


def test_unwritable_out_is_a_user_error_before_orbax_runs(tmp_path):
    pytest.importorskip("safetensors", reason="needs safetensors: pip install 'navee-jax[torch]'")
    src = _write(_random_state_dict(), str(tmp_path / "resnet18.safetensors"))
    with pytest.raises(UserError, match="cannot create its parent directory"):
        convert("resnet18", src, str(tmp_path / "resnet18.safetensors" / "sub" / "out"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_model_pretrained_loads_the_weights_when_the_model_is_built(tmp_path, fmt):
    from configs import common
    from navee_jax.models import build_model

    state_dict = _random_state_dict(seed=3)
    cfg = common.get_config("digits")
    cfg.model.pretrained = _write(state_dict, str(tmp_path / f"resnet18.{fmt}"))
    model = build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size)
    np.testing.assert_array_equal(model.backbone.layer4[1].conv2.kernel[...],
                                  state_dict["layer4.1.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.backbone.bn1.mean[...], state_dict["bn1.running_mean"])
    cfg.model.width = 32  # weights of a width-64 network do not fit: one line naming the first tensor
    with pytest.raises(UserError, match=r"resnet18\.\w+: tensor '[\w.]+' has shape \(64.*\) but ResNet expects \(32"):
        build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size)
