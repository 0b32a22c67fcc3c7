"""AMI-Net's fused ops behind one dispatcher: `adaptive_mask`, `score_map` and `nearest_distance` (the
nearest-normal guide's bank search).

Backends (one registry, printed by `aminet-edge info` via `available_backends`):
- "reference": aminet_edge/ops/reference.py, the PyTorch truth (training uses it; differentiable).
- "cpp": C++/OpenMP kernels, module aminet_edge._cpu_kernels (csrc/cpu/), wrapper ops/cpu.py; numpy
  arrays and CPU torch tensors.
- "triton": Triton kernels (ops/triton/) for torch CUDA tensors; CPU tensors only under TRITON_INTERPRET=1.
- "cuda": libaminet_cuda.so (csrc/cuda/) through ctypes (ops/cuda.py), for torch CUDA tensors here.

backend="auto" picks the fastest available for where the inputs live: CUDA tensors triton > cuda >
reference; CPU tensors cpp > reference; numpy arrays cpp only (else an error saying how to build it).
`select_backend` says what auto would pick, `last_backend` what the last call used.
Results come back as the inputs came: numpy in, numpy out; torch in, torch out on the same device.
The fast backends are not differentiable (they detach); train with "reference".

This module imports neither torch nor triton: the torch-free runtime calls it with numpy arrays.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np

from aminet_edge.ops import cpu as _cpu
from aminet_edge.ops import cuda as _cuda

BACKENDS = ("reference", "cpp", "triton", "cuda")
OPS = ("adaptive_mask", "score_map", "nearest_distance")
_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference"), "numpy": ("cpp",)}
_last: dict[str, str] = {}


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor cannot exist unless torch was imported
    return torch is not None and isinstance(x, torch.Tensor)


def _kind(x: Any) -> str:
    """Where `x` lives: "numpy" (arrays and array-likes), or a torch device type ("cpu", "cuda", ...)."""
    return x.device.type if _is_torch(x) else "numpy"


def _torch_reason() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install 'aminet-edge[train]')"
    return None


def unavailable_reason(backend: str, kind: str) -> str | None:
    """None when `backend` can run inputs living in `kind` ("numpy", "cpu", "cuda"), else why not."""
    if backend == "reference":
        return _torch_reason()
    if backend == "cpp":
        if kind not in ("numpy", "cpu"):
            return f"the cpp backend runs numpy arrays and CPU tensors, not {kind} tensors"
        return _cpu.unavailable_reason()
    if backend == "triton":
        if kind == "numpy":
            return "the triton backend runs torch tensors, not numpy arrays"
        from aminet_edge.ops import triton as _triton

        return _triton.unavailable_reason(kind)
    if backend == "cuda":
        if kind != "cuda":
            return f"the cuda backend runs CUDA torch tensors, not {kind} inputs"
        return _cuda.unavailable_reason()
    return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or 'auto'"


def select_backend(op: str, device: Any) -> str:
    """The backend `backend="auto"` uses for `op` on `device`.

    device: "numpy", "cpu", "cuda" (or "cuda:1"), a torch.device, or an input array/tensor.
    RuntimeError when none is available, with each candidate's reason.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
    if isinstance(device, str):
        kind = device.split(":")[0]
    elif type(device).__name__ == "device" and hasattr(device, "type"):
        kind = device.type
    else:
        kind = _kind(device)
    order = _AUTO_ORDER.get(kind, ("reference",))
    reasons = {}
    for name in order:
        reason = unavailable_reason(name, kind)
        if reason is None:
            return name
        reasons[name] = reason
    detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    if kind == "numpy":
        raise RuntimeError(f"{op} on numpy arrays needs the C++ extension ({detail})")
    raise RuntimeError(f"no backend can run {op} on {kind} inputs ({detail})")


def last_backend(op: str) -> str | None:
    """The backend the last call of `op` in this process ran on (None before any call)."""
    return _last.get(op)


def available_backends() -> dict[str, str]:
    """Backend name -> "available" or why not, for this machine (what `aminet-edge info` prints)."""
    out = {}
    ref = _torch_reason()
    out["reference"] = ref or "available"
    cpp = _cpu.unavailable_reason()
    out["cpp"] = cpp or f"available ({_cpu.num_threads()} OpenMP threads)"
    from aminet_edge.ops import triton as _triton

    reason = _triton.unavailable_reason("cuda") if ref is None else ref
    if reason is not None and _triton.interpret_mode() and _triton.unavailable_reason("cpu") is None:
        out["triton"] = f"interpreter only (TRITON_INTERPRET=1, CPU tensors; {reason})"
    else:
        out["triton"] = reason or "available"
    out["cuda"] = _cuda.unavailable_reason() or "available"
    return out


def _resolve(op: str, backend: str, kind: str) -> str:
    if backend == "auto":
        return select_backend(op, kind)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
    reason = unavailable_reason(backend, kind)
    if reason is not None:
        raise RuntimeError(f"backend {backend!r} cannot run {op} here: {reason}")
    return backend


def _same_kind(op: str, a: Any, b: Any) -> str:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        raise TypeError(f"{op}: both inputs must live in the same place, got {ka} and {kb}")
    return ka


def _np_input(x: Any) -> np.ndarray:
    """A CPU tensor or array-like as a numpy array the C++ kernels take (float32 or float16)."""
    if _is_torch(x):
        import torch

        x = x.detach()
        if x.dtype not in (torch.float32, torch.float16):
            x = x.float()
        return x.contiguous().numpy()
    return np.asarray(x)


def _cuda_input(x: Any) -> tuple[Any, int]:
    """A CUDA tensor as (contiguous float32/float16 tensor, C-API dtype code)."""
    import torch

    x = x.detach()
    if x.dtype not in (torch.float32, torch.float16):
        x = x.float()
    return x.contiguous(), _cuda.DTYPE_FLOAT16 if x.dtype == torch.float16 else _cuda.DTYPE_FLOAT32


_DEVICE_MATRICES: dict[tuple[int, int, float, str], Any] = {}


def _device_matrix(in_size: int, out_size: int, sigma: float, device: Any) -> Any:
    """smoothing_matrix on a CUDA device for the cuda backend, cached per (in, out, sigma, device)."""
    key = (in_size, out_size, float(sigma), str(device))
    if key not in _DEVICE_MATRICES:
        import torch

        _DEVICE_MATRICES[key] = torch.from_numpy(_cuda.smoothing_matrix(in_size, out_size, sigma).copy()).to(device)
    return _DEVICE_MATRICES[key]


def _check_mask_shapes(tokens: Any, centers: Any) -> None:
    ts, cs = tuple(tokens.shape), tuple(centers.shape)
    if len(ts) != 3 or len(cs) != 3 or ts[0] != cs[0] or ts[2] != cs[2] or cs[1] < 1:
        raise ValueError(f"tokens must be (B, L, D) and centers (B, P >= 1, D), got {ts} and {cs}")


def adaptive_mask(tokens: Any, centers: Any, lam: float, backend: str = "auto") -> tuple[Any, Any, Any]:
    """Assign tokens to their nearest centre and mask those beyond their cluster's boundary.

    tokens: (B, L, D), centers: (B, P, D), float32 or float16 (other dtypes are converted to float32);
    numpy arrays or torch tensors. lam: the boundary factor lambda. Semantics: reference.adaptive_mask.
    Returns mask (B, L) bool (True = masked), min_dist (B, L) float32, assign (B, L) int64, as numpy
    arrays for numpy inputs, else torch tensors on the inputs' device.
    """
    kind = _same_kind("adaptive_mask", tokens, centers)
    if kind == "numpy":
        tokens, centers = np.asarray(tokens), np.asarray(centers)
    _check_mask_shapes(tokens, centers)
    name = _resolve("adaptive_mask", backend, kind)
    _last["adaptive_mask"] = name
    if name == "cpp":
        out = _cpu.adaptive_mask(_np_input(tokens), _np_input(centers), float(lam))
        if kind == "numpy":
            return out
        import torch

        return tuple(torch.from_numpy(o) for o in out)  # type: ignore[return-value]
    if name == "reference":
        from aminet_edge.ops import reference

        if kind == "numpy":
            import torch

            got = reference.adaptive_mask(torch.from_numpy(tokens), torch.from_numpy(centers), float(lam))
            return tuple(o.numpy() for o in got)  # type: ignore[return-value]
        return reference.adaptive_mask(tokens, centers, float(lam))
    if name == "triton":
        from aminet_edge.ops.triton.adaptive_mask import adaptive_mask as triton_adaptive_mask

        return triton_adaptive_mask(tokens, centers, float(lam))
    # cuda
    import torch

    t, dtype = _cuda_input(tokens)
    c = centers.detach().to(t.dtype).contiguous()
    B, L, D = t.shape
    P = c.shape[1]
    mask = torch.zeros((B, L), dtype=torch.bool, device=t.device)
    min_dist = torch.empty((B, L), dtype=torch.float32, device=t.device)
    assign = torch.empty((B, L), dtype=torch.int64, device=t.device)
    with torch.cuda.device(t.device):
        stream = torch.cuda.current_stream(t.device).cuda_stream
        _cuda.adaptive_mask(t.data_ptr(), c.data_ptr(), dtype, B, L, P, D, float(lam), mask.data_ptr(),
                            min_dist.data_ptr(), assign.data_ptr(), stream)
    return mask, min_dist, assign


def _check_score_args(feat: Any, recon: Any, out_hw: Any, sigma: float, image_score: str) -> tuple[int, int]:
    if image_score not in ("std", "max"):
        raise ValueError(f"image_score must be 'std' or 'max', got {image_score!r}")
    fs, rs = tuple(feat.shape), tuple(recon.shape)
    if len(fs) != 4 or fs != rs or min(fs) < 1:
        raise ValueError(f"feat and recon must both be (B, C, h, w) and non-empty, got {fs} and {rs}")
    out_h, out_w = (int(out_hw), int(out_hw)) if np.ndim(out_hw) == 0 else (int(out_hw[0]), int(out_hw[1]))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"out_hw must be positive, got {(out_h, out_w)}")
    return out_h, out_w


def _place(x: Any) -> str:
    """"numpy", or a torch tensor's device ("cpu", "cuda:0", ...)."""
    return str(x.device) if _is_torch(x) else "numpy"


def _check_token_args(feat: Any, token_map: Any, token_weight: Any) -> tuple[Any, float]:
    """token_map as the backends take it (numpy for numpy feat) and token_weight as a float; ValueError when
    token_map is not (B, gh >= 1, gw >= 1) living where feat does, or token_weight is not finite and >= 0."""
    try:
        weight = float(token_weight)
    except (TypeError, ValueError):
        raise ValueError(f"token_weight must be a finite float >= 0, got {token_weight!r}") from None
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(f"token_weight must be a finite float >= 0, got {weight}")
    if token_map is None:
        return None, weight
    if _place(token_map) != _place(feat):
        raise ValueError(f"token_map must live where feat does ({_place(feat)}), got {_place(token_map)}")
    if not _is_torch(feat):
        token_map = np.asarray(token_map)
    ts = tuple(token_map.shape)
    if len(ts) != 3 or ts[0] != feat.shape[0] or min(ts) < 1:
        raise ValueError(f"token_map must be (B, gh, gw) with feat's B = {feat.shape[0]} and gh, gw >= 1, got {ts}")
    return token_map, weight


def score_map(
    feat: Any,
    recon: Any,
    out_hw: tuple[int, int] | int,
    sigma: float = 4.0,
    image_score: str = "std",
    backend: str = "auto",
    token_map: Any = None,
    token_weight: float = 0.0,
) -> tuple[Any, Any]:
    """Anomaly map and image score from features and their restoration.

    feat, recon: (B, C, h, w) float32 or float16 (other dtypes converted to float32), numpy or torch;
    out_hw: (H, W) output pixels (an int means square); sigma: Gaussian sigma in output pixels (<= 0: no
    smoothing); image_score: "std" (population std of the map) or "max". token_map: None, or (B, gh, gw)
    per-token distances on any grid (used as float32), the same kind (numpy / torch) and device as feat:
    the map becomes mse * cosd + token_weight (finite, >= 0) * the token map upsampled and smoothed to
    (H, W) like mse and cosd, and the image score is taken of that sum. Semantics: reference.score_map.
    Returns amap (B, H, W) float32 and score (B,) float32, numpy for numpy inputs, else torch tensors on
    the inputs' device.
    """
    kind = _same_kind("score_map", feat, recon)
    if kind == "numpy":
        feat, recon = np.asarray(feat), np.asarray(recon)
    hw = _check_score_args(feat, recon, out_hw, sigma, image_score)
    token_map, token_weight = _check_token_args(feat, token_map, token_weight)
    name = _resolve("score_map", backend, kind)
    _last["score_map"] = name
    if name == "cpp":
        tm = None if token_map is None else _np_input(token_map)
        out = _cpu.score_map(_np_input(feat), _np_input(recon), hw, float(sigma), image_score, tm, token_weight)
        if kind == "numpy":
            return out
        import torch

        return tuple(torch.from_numpy(o) for o in out)  # type: ignore[return-value]
    if name == "reference":
        from aminet_edge.ops import reference

        if kind == "numpy":
            import torch

            d = None if token_map is None else torch.from_numpy(token_map)
            got = reference.score_map(torch.from_numpy(feat), torch.from_numpy(recon), hw, float(sigma), image_score,
                                      d, token_weight)
            return tuple(o.numpy() for o in got)  # type: ignore[return-value]
        return reference.score_map(feat, recon, hw, float(sigma), image_score, token_map, token_weight)
    if name == "triton":
        from aminet_edge.ops.triton.score_map import score_map as triton_score_map

        return triton_score_map(feat, recon, hw, float(sigma), image_score, token_map, token_weight)
    # cuda
    import torch

    f, dtype = _cuda_input(feat)
    r = recon.detach().to(f.dtype).contiguous()
    B, C, h, w = f.shape
    H, W = hw
    dev = f.device
    a_h = _device_matrix(h, H, sigma, dev)
    a_w = _device_matrix(w, W, sigma, dev)
    token: dict[str, Any] = {}
    if token_map is not None:
        d = token_map.detach().float().contiguous()
        gh, gw = d.shape[1], d.shape[2]
        token = dict(token_map=d.data_ptr(), gh=gh, gw=gw, a_hg=_device_matrix(gh, H, sigma, dev).data_ptr(),
                     a_wg=_device_matrix(gw, W, sigma, dev).data_ptr(), token_weight=token_weight)
    amap = torch.empty((B, H, W), dtype=torch.float32, device=dev)
    score = torch.empty((B,), dtype=torch.float32, device=dev)
    nbytes = _cuda.score_map_workspace_bytes(B, h, w, H, token.get("gw", 0))
    workspace = torch.empty((nbytes,), dtype=torch.uint8, device=dev)
    code = _cuda.SCORE_MAX if image_score == "max" else _cuda.SCORE_STD
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        _cuda.score_map(f.data_ptr(), r.data_ptr(), dtype, B, C, h, w, a_h.data_ptr(), H, a_w.data_ptr(), W, code,
                        amap.data_ptr(), score.data_ptr(), workspace.data_ptr(), stream, **token)
    return amap, score


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def _check_nearest_args(queries: Any, bank: Any) -> tuple[int, ...]:
    """The output's shape (queries' leading dims); ValueError / TypeError naming the argument, its shape and
    dtype when queries is not (..., C) floating point or bank not (M >= 1, C) float16 / float32."""
    qs, bs = tuple(queries.shape), tuple(bank.shape)
    q_float = queries.is_floating_point() if _is_torch(queries) else queries.dtype.kind == "f"
    if not q_float:
        raise TypeError(f"nearest_distance: queries must be floating point (used as float32), got {_dtype_name(queries)}"
                        f" with shape {qs}")
    if _dtype_name(bank) not in ("float16", "float32"):
        raise TypeError(f"nearest_distance: bank must be float16 or float32 (convert it once, not per call), got "
                        f"{_dtype_name(bank)} with shape {bs}")
    if len(bs) != 2 or bs[0] < 1 or bs[1] < 1:
        raise ValueError(f"nearest_distance: bank must be (M >= 1, C >= 1), got shape {bs} ({_dtype_name(bank)})")
    if len(qs) < 1 or qs[-1] != bs[1]:
        raise ValueError(f"nearest_distance: queries must be (..., C) with the bank's C = {bs[1]}, got shape {qs} "
                         f"({_dtype_name(queries)})")
    return qs[:-1]


def nearest_distance(queries: Any, bank: Any, backend: str = "auto") -> Any:
    """Euclidean distance from each query to its nearest bank row (the nearest-normal guide's search).

    queries: (..., C) floating point (used as float32); bank: (M, C) float16 or float32, read as stored
    (fp16 is widened inside the kernels, no float32 copy); numpy arrays or torch tensors, both the same
    kind and on the same device. Semantics: reference.nearest_distance: the row minimising
    ||b||^2 - 2 q.b (ties to the lowest index), then the exact ||q - b|| of that row. The fast backends
    never form the (N, M) score matrix and keep no per-bank state: the bank's squared norms are summed as
    each tile of the bank is loaded (M * C multiply-adds against the 2 * N * M * C of the products), so
    callers pass the same bank every call and nothing else. A pick can differ from the reference's only
    between rows whose scores agree to float32 rounding (each backend sums q.b in its own order).
    Returns (...) float32: numpy for numpy inputs, else a torch tensor on the inputs' device.
    """
    kind = _same_kind("nearest_distance", queries, bank)
    if kind == "numpy":
        queries, bank = np.asarray(queries), np.asarray(bank)
    lead = _check_nearest_args(queries, bank)
    name = _resolve("nearest_distance", backend, kind)
    _last["nearest_distance"] = name
    if name == "cpp":
        out = _cpu.nearest_distance(_np_input(queries).reshape(-1, bank.shape[1]), _np_input(bank)).reshape(lead)
        if kind == "numpy":
            return out
        import torch

        return torch.from_numpy(out)
    if name == "reference":
        from aminet_edge.ops import reference

        if kind == "numpy":
            import torch

            return reference.nearest_distance(torch.from_numpy(queries), torch.from_numpy(bank)).numpy()
        return reference.nearest_distance(queries.detach(), bank.detach())
    if name == "triton":
        from aminet_edge.ops.triton.nearest_distance import nearest_distance as triton_nearest_distance

        return triton_nearest_distance(queries, bank)
    # cuda
    import torch

    q = queries.detach().float().reshape(-1, bank.shape[1]).contiguous()
    b = bank.detach().contiguous()
    dtype = _cuda.DTYPE_FLOAT16 if b.dtype == torch.float16 else _cuda.DTYPE_FLOAT32
    N, M, C = q.shape[0], b.shape[0], b.shape[1]
    out = torch.empty((N,), dtype=torch.float32, device=q.device)
    if N:
        workspace = torch.empty((_cuda.nearest_distance_workspace_bytes(N, M),), dtype=torch.uint8, device=q.device)
        with torch.cuda.device(q.device):
            stream = torch.cuda.current_stream(q.device).cuda_stream
            _cuda.nearest_distance(q.data_ptr(), b.data_ptr(), dtype, N, M, C, out.data_ptr(), workspace.data_ptr(),
                                   stream)
    return out.reshape(lead)
