"""Which torch device training, evaluation and export run on: one parser for `--device` everywhere.

Spellings: "auto" (the current CUDA device, cuda:0 unless torch.cuda.set_device chose another, when
torch sees a GPU; else the CPU), "cpu", "cuda" (the same current CUDA device) and "cuda:N". Anything else, or a CUDA device that is not there,
is a ValueError naming the problem and the devices that do exist. Training code only; the torch-free
runtime has its own device handling.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The torch.device for `spec` (see the module docstring), always with an index for CUDA."""
    text = str(spec).strip().lower()
    match = _SPEC.match(text)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {str(spec)!r}")
    kind, index = match.group(1), match.group(2)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "cpu" or (kind == "auto" and count == 0):
        return torch.device("cpu")
    if count == 0:
        raise ValueError(f"device {text!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'no, a CPU-only build'}); use --device cpu")
    n = torch.cuda.current_device() if index is None else int(index)
    if n >= count:
        raise ValueError(f"device {text!r} does not exist: torch sees {count} CUDA device(s), "
                         f"cuda:0..cuda:{count - 1}")
    return torch.device("cuda", n)


def describe_device(device: torch.device) -> str:
    """"cpu" or "cuda:0 (NVIDIA H200)": what the logs and the bundle record."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`: random ops on that device must draw from it.

    CPU: the same Mersenne-Twister stream as `torch.Generator().manual_seed(seed)`. CUDA: Philox,
    repeatable for one seed on one GPU model and torch version, not equal to the CPU stream.
    """
    return torch.Generator(device=device).manual_seed(seed)


# scaled_dot_product_attention's CUDA kernels: flash, memory-efficient and cuDNN have non-deterministic
# backward passes (atomic adds) that use_deterministic_algorithms(warn_only=True) still lets run; math
# (matmuls and softmax, as the model is written) is deterministic
SDPA_KERNELS = ("flash", "mem_efficient", "cudnn", "math")


@contextmanager
def math_attention(only: bool = True) -> Iterator[None]:
    """Within: scaled_dot_product_attention on CUDA may use the math kernel alone (`only`), or every kernel
    torch has (only=False: flash and memory-efficient too, faster, not repeatable). Torch's global kernel
    flags are restored on exit."""
    cuda = torch.backends.cuda
    names = [n for n in SDPA_KERNELS if hasattr(cuda, f"enable_{n}_sdp")]  # cuDNN's flag: torch >= 2.3
    saved = {n: getattr(cuda, f"{n}_sdp_enabled")() for n in names}
    for n in names:
        getattr(cuda, f"enable_{n}_sdp")(n == "math" or not only)
    try:
        yield
    finally:
        for n, on in saved.items():
            getattr(cuda, f"enable_{n}_sdp")(on)


@contextmanager
def repeatable(device: torch.device) -> Iterator[None]:
    """Within: one seed gives one result on one GPU (deterministic cuDNN convolutions, cuBLAS workspace,
    the math attention kernel: `math_attention`). Ops without a deterministic CUDA kernel still run, with
    torch's warning. Global torch flags are restored on exit. The CPU needs nothing (its kernels are
    deterministic).
    """
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS makes its workspace
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        with math_attention():
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark = saved[2], saved[3]
