"""Training checkpoints: enough state that `--resume` ends exactly where an uninterrupted run ends.

Holds the epoch, the AMI-Net weights, optimizer and gradient-scaler state, the random generator's
state with the device type it belongs to, the resolved precision and the history. A CPU generator's
stream cannot continue on a GPU (nor the reverse), and a different precision changes every step, so
resuming with either changed is refused with the reason. Checkpoints of earlier versions (no device or
precision recorded) were CPU fp32 runs. Loaded with weights_only=True: no unpickling of objects.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aminet_edge.bundle import BundleError
from aminet_edge.model.aminet import AMINet
from aminet_edge.training.step import TrainStep

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(path: Path, epoch: int, aminet: AMINet, step: TrainStep, gen: torch.Generator,
                    history: list[dict[str, float]], device_name: str) -> None:
    """Write the checkpoint atomically (a crash mid-write leaves the previous one)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"epoch": epoch, "aminet": aminet.state_dict(), **step.state_dict(),
                "generator": gen.get_state(), "generator_device": gen.device.type,
                "precision": step.precision, "device": device_name, "history": history}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, aminet: AMINet, step: TrainStep,
                    gen: torch.Generator) -> tuple[int, list[dict[str, float]]]:
    """Restore `path` into the model, step and generator (tensors mapped to the model's device);
    returns (epochs done, history). ValueError when the device type or precision differs; BundleError
    when the file is not such a checkpoint (another program's pickle, truncated, another model)."""
    try:
        state = torch.load(path, weights_only=True, map_location=step.device)  # never unpickle objects
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError, ...
        raise _not_a_checkpoint(path, exc) from exc
    if not isinstance(state, dict):
        raise _not_a_checkpoint(path, TypeError(f"holds a {type(state).__name__}, not a dict"))
    was_on = state.get("generator_device", "cpu")
    if was_on != gen.device.type:
        raise ValueError(f"{path} was written by a run on {state.get('device', was_on)}; its random stream "
                         f"continues only on a {was_on} device: resume with --device {was_on}, "
                         f"or train afresh without --resume")
    precision = state.get("precision", "fp32")
    if precision != step.precision:
        raise ValueError(f"{path} was written by a {precision} run; this run is {step.precision}: "
                         f"resume with --precision {precision}, or train afresh without --resume")
    try:
        aminet.load_state_dict(state["aminet"])
        step.load_state_dict(state)
        gen.set_state(state["generator"].cpu())  # a generator's state is a CPU byte tensor on every device
        return int(state["epoch"]), list(state["history"])
    except Exception as exc:  # noqa: BLE001 - KeyError, RuntimeError (shapes), TypeError, ...
        raise _not_a_checkpoint(path, exc) from exc


def _not_a_checkpoint(path: Path, exc: Exception) -> BundleError:
    reason = " ".join(str(exc).split())[:200]
    return BundleError(f"{path}: not a checkpoint of this training (written by another program or model "
                       f"configuration, or truncated: {type(exc).__name__}: {reason}); "
                       "delete it to start over, or train without --resume")
