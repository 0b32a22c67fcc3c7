"""Reading backbone weight files safely (never unpickling objects)."""

from __future__ import annotations

from pathlib import Path

import torch


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained backbone weights are not available; the message says how to get them."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.pt with torch.load(weights_only=True).

    Errors name the file: missing, unreadable, or not a flat name -> tensor mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported with the file name
        raise ValueError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(state)
