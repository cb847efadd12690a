"""Weight files as NumPy: a torchvision / transformers state_dict from .pth / .pt (PyTorch) or .safetensors, with
one-line errors for whatever is wrong with the file (navee_jax.models.convert and navee_jax.models.hf_vit read
through it)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from navee_jax.errors import UserError

INSTALL_HINT = "pip install 'navee-jax[torch]'"


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A torchvision state_dict from .pth / .pt (PyTorch) or .safetensors, as numpy arrays.

    torch and safetensors are imported here, not at module level, so that everything else in
    navee_jax works without them; floating tensors become float32 (numpy has no bfloat16).
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise UserError(f"reading {path} needs PyTorch: {INSTALL_HINT}") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle / zip / weights_only refusals: all mean "not a plain state_dict file"
            raise UserError(f"{path}: not a readable PyTorch state_dict ({first_line(e)})") from None
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UserError(f"{path}: expected a state_dict (tensor name -> tensor), got a {type(obj).__name__} "
                            f"of other things; save model.state_dict() instead")
        return {k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy() for k, v in obj.items()}
    if ext == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise UserError(f"reading {path} needs safetensors: {INSTALL_HINT}") from None
        try:
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own error types for corrupt headers / dtypes
            raise UserError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
        return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in tensors.items()}
    raise UserError(f"{path}: unknown weights format {ext!r}; expected .pth, .pt, .safetensors or a directory "
                    f"written by python -m navee_jax.models.convert")
