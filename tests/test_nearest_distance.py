"""nearest_distance: every backend against reference.nearest_distance, over shapes and edge cases.

Backends as tests/test_adaptive_mask.py: "cpp" (CPU torch tensors, backend="auto" must pick it),
"cpp-numpy" (numpy arrays, the torch-free runtime's path), "triton" (Triton's interpreter on CPU tensors,
every case in one subprocess), and on a GPU "triton-cuda" and "cuda" (marked gpu, skipped elsewhere).
Each backend also returns the picked rows (its module's return_index), checked here too.

What must agree, and why that much. Every backend ranks rows by the float32 score ||b||^2 - 2 q.b, each
summing q.b in its own order, so two rows whose scores are within float32 rounding of each other may be
picked differently. Per query, the candidates are the rows whose score (in float64) is within
MARGIN * (max ||b||^2 + 2 ||q|| max ||b||) of the minimum: that bound covers the rounding of the float32
terms, with C <= 176 products in a sum (a relative error of a few 1e-7 in practice, < 1e-5 always here).
- the picked row is a candidate; when the candidates are exact ties (identical scores in float64, as
  duplicate rows give), it is the lowest index, as the reference's argmin;
- the distance is that row's exact distance (float64) to rtol 1e-5, and where the minimum is unique it
  equals the reference's (rtol 1e-5, atol 1e-6 * max distance: the norm of q - b summed in another order);
- random cases may have at most 2% of queries with several non-identical candidates; the designed cases
  (exact ties, a query on a bank row) none.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aminet_edge import ops  # noqa: E402
from aminet_edge.ops import reference  # noqa: E402
from triton_interpreter import BACKENDS, WORKER, interpreted_outputs, need_gpu, save_case_outputs  # noqa: E402

RTOL = 1e-5
ATOL = 1e-6  # times the largest distance
MARGIN = 1e-5  # relative to the magnitude of the score's terms
MAX_NEAR_TIES = 0.02


def _gen(seed: int):  # -> torch.Generator
    return torch.Generator().manual_seed(seed)


def _random(shape: tuple[int, ...], M: int, seed: int, bank_dtype=torch.float16, scale: float = 1.0) -> dict:
    g = _gen(seed)
    C = shape[-1]
    bank = (scale * torch.randn(M, C, generator=g)).to(bank_dtype)
    queries = scale * torch.randn(*shape, generator=g)
    return dict(queries=queries, bank=bank, exact=False)


def _near_rows(B: int, L: int, M: int, C: int, seed: int, scale: float) -> dict:
    """Queries near bank rows, the regime of normal tokens, at a magnitude where ||q||^2 - 2 q.b + ||b||^2
    would cancel (scale 500: norms ~1e4, distances ~1e2)."""
    g = _gen(seed)
    bank = (scale * torch.randn(M, C, generator=g) + 3 * scale).half()
    pick = torch.randint(0, M, (B, L), generator=g)
    queries = bank[pick].float() + 0.01 * scale * torch.randn(B, L, C, generator=g)
    return dict(queries=queries, bank=bank, exact=False)


def _ties() -> dict:
    """Exact duplicates of the rows the queries sit near, placed before and after the original and across
    strip, tile and chunk boundaries: the pick must be the lowest index of the copies."""
    g = _gen(5)
    M, C = 1500, 40
    bank = torch.randn(M, C, generator=g)
    sources = torch.tensor([700, 1400, 31, 1000])
    copies = {700: [3, 699, 1450], 1400: [1, 63, 64, 1499], 31: [32, 33, 1024], 1000: [5, 511, 512, 1100]}
    for src, dsts in copies.items():
        bank[dsts] = bank[src].clone()
    pick = sources[torch.randint(0, len(sources), (2, 30), generator=g)]
    queries = bank[pick] + 0.05 * torch.randn(2, 30, C, generator=g)
    lowest = {src: min([src, *dsts]) for src, dsts in copies.items()}
    expected = torch.tensor([[lowest[int(s)] for s in row] for row in pick])
    return dict(queries=queries, bank=bank.half(), exact=True, expected_index=expected.numpy())


def _on_rows() -> dict:
    """Queries equal to bank rows (float32 bank): distance exactly 0 and the row itself picked."""
    g = _gen(6)
    bank = torch.randn(300, 24, generator=g) * 10.0
    pick = torch.randperm(300, generator=g)[:50]
    return dict(queries=bank[pick].clone(), bank=bank, exact=True, expected_index=pick.numpy(),
                expected_zero=True)


def _noncontiguous() -> dict:
    g = _gen(7)
    queries = torch.randn(24, 3, 48, generator=g).transpose(0, 1)  # (3, 24, 48), strided
    bank = torch.randn(2 * 333, 48, generator=g).half()[::2]  # every other row
    assert not queries.is_contiguous() and not bank.is_contiguous()
    return dict(queries=queries, bank=bank, exact=False)


CASES = {
    "random_fp16": lambda: _random((3, 37, 33), 1000, seed=1),  # C not a multiple of 16, M of no tile
    "random_fp32": lambda: _random((2, 50, 176), 777, seed=2, bank_dtype=torch.float32),
    "guide_shape": lambda: _random((1, 256, 176), 2048, seed=3),  # B * L = 256 tokens, the cpu preset's C
    "two_dims": lambda: _random((45, 17), 129, seed=4),
    "one_query": lambda: _random((176,), 500, seed=8),  # (C,) -> ()
    "one_row": lambda: _random((2, 9, 20), 1, seed=9),  # M = 1
    "fp16_queries": lambda: {**_random((2, 20, 64), 300, seed=10), "queries": torch.randn(2, 20, 64,
                                                                                          generator=_gen(11)).half()},
    "near_rows_large_magnitude": lambda: _near_rows(2, 64, 600, 176, seed=12, scale=500.0),
    "exact_ties": _ties,
    "queries_on_rows": _on_rows,
    "noncontiguous": _noncontiguous,
    "no_queries": lambda: _random((0, 16), 50, seed=13),
}


def _triton_case(c: dict) -> dict:
    """One case on the triton backend (runs in the interpreted subprocess)."""
    from aminet_edge.ops.triton.nearest_distance import nearest_distance as triton_nearest

    dist = ops.nearest_distance(c["queries"], c["bank"], backend="triton")
    _, index = triton_nearest(c["queries"], c["bank"], return_index=True)
    return {"dist": dist.numpy(), "index": index.reshape(-1).numpy()}


@pytest.fixture(scope="module")
def triton_interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The triton backend's outputs for every case, from one interpreted subprocess."""
    return interpreted_outputs(__file__, tmp_path_factory)


def _need_cpp() -> None:
    from aminet_edge.ops import cpu

    reason = cpu.unavailable_reason()
    if reason:
        pytest.skip(reason)


def _run(backend: str, queries, bank, request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    """The backend's distances (queries' leading shape) and picked rows (flat) as numpy arrays."""
    if backend in ("cpp", "cpp-numpy"):
        _need_cpp()
        from aminet_edge.ops import cpu

        if backend == "cpp":
            dist = ops.nearest_distance(queries, bank)  # auto must choose cpp for CPU tensors
            assert isinstance(dist, torch.Tensor)
            dist = dist.numpy()
        else:
            dist = ops.nearest_distance(queries.numpy(), bank.numpy())
            assert isinstance(dist, np.ndarray)
        assert ops.last_backend("nearest_distance") == "cpp"
        _, index = cpu.nearest_distance(queries.reshape(-1, bank.shape[1]).numpy(), bank.numpy(), return_index=True)
        return dist, index
    if backend == "triton":
        results = request.getfixturevalue("triton_interpreted")
        case = request.node.callspec.params["case"]
        if f"{case}/error" in results:
            pytest.fail(f"triton backend raised:\n{results[f'{case}/error']}")
        return results[f"{case}/dist"], results[f"{case}/index"]
    need_gpu()
    if backend == "cuda":
        from aminet_edge.ops import cuda

        reason = cuda.unavailable_reason()
        if reason:
            pytest.skip(reason)
        q, b = queries.cuda(), bank.cuda()
        dist = ops.nearest_distance(q, b, backend="cuda").cpu().numpy()
        return dist, _cuda_index(q, b)
    from aminet_edge.ops.triton.nearest_distance import nearest_distance as triton_nearest

    q, b = queries.cuda(), bank.cuda()
    dist = ops.nearest_distance(q, b, backend="triton").cpu().numpy()
    return dist, triton_nearest(q, b, return_index=True)[1].reshape(-1).cpu().numpy()


def _cuda_index(q, b) -> np.ndarray:
    """The cuda backend's picked rows, through the ctypes wrapper."""
    from aminet_edge.ops import cuda

    q = q.float().reshape(-1, b.shape[1]).contiguous()
    b = b.contiguous()
    N, M, C = q.shape[0], b.shape[0], b.shape[1]
    out = torch.empty(N, dtype=torch.float32, device=q.device)
    index = torch.empty(N, dtype=torch.int64, device=q.device)
    if N:
        ws = torch.empty(cuda.nearest_distance_workspace_bytes(N, M), dtype=torch.uint8, device=q.device)
        dtype = cuda.DTYPE_FLOAT16 if b.dtype == torch.float16 else cuda.DTYPE_FLOAT32
        cuda.nearest_distance(q.data_ptr(), b.data_ptr(), dtype, N, M, C, out.data_ptr(), ws.data_ptr(),
                              torch.cuda.current_stream().cuda_stream, index=index.data_ptr())
        torch.cuda.synchronize()
    return index.cpu().numpy()


def _candidates(queries: np.ndarray, bank: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Per query (flattened): the candidate rows (score within the rounding margin of the minimum) and
    whether they are exact ties (identical float64 scores)."""
    q = queries.reshape(-1, bank.shape[1]).astype(np.float64)
    b = bank.astype(np.float64)
    bb = (b * b).sum(1)
    scores = bb[None, :] - 2.0 * q @ b.T  # (N, M)
    qq = (q * q).sum(1)
    slack = MARGIN * (bb.max() + 2.0 * np.sqrt(qq) * np.sqrt(bb.max()))
    smin = scores.min(1)
    cands = [np.flatnonzero(scores[n] <= smin[n] + slack[n]) for n in range(len(q))]
    ties = np.array([bool((scores[n, c] == smin[n]).all()) for n, c in enumerate(cands)], dtype=bool)
    return cands, ties


def _check(queries: np.ndarray, bank: np.ndarray, dist: np.ndarray, index: np.ndarray, ref: np.ndarray,
           exact_case: bool, expected_index: np.ndarray | None = None) -> None:
    """Asserts the module docstring's agreement; queries (..., C), bank (M, C), dist / ref (...)."""
    assert dist.dtype == np.float32 and dist.shape == ref.shape == queries.shape[:-1]
    assert index.dtype == np.int64 and index.shape == (int(np.prod(queries.shape[:-1])),)
    if index.size == 0:
        return
    cands, ties = _candidates(queries, bank)
    flat, flat_ref = dist.reshape(-1), ref.reshape(-1)
    scale = float(np.abs(flat_ref).max())
    near = np.array([len(c) > 1 and not t for c, t in zip(cands, ties)])
    for n, c in enumerate(cands):
        assert index[n] in c, f"query {n}: row {index[n]} picked, candidates {c[:8].tolist()}"
        if ties[n]:
            assert index[n] == c.min(), f"query {n}: exact tie among {c.tolist()} went to {index[n]}"
    q, b = queries.reshape(-1, bank.shape[1]).astype(np.float64), bank.astype(np.float64)
    exact = np.sqrt(((q - b[index]) ** 2).sum(1))  # the picked row's distance, directly
    np.testing.assert_allclose(flat, exact, rtol=RTOL, atol=ATOL * scale)
    unique = ~near
    np.testing.assert_allclose(flat[unique], flat_ref[unique], rtol=RTOL, atol=ATOL * scale)
    if expected_index is not None:
        np.testing.assert_array_equal(index, expected_index.reshape(-1))
    if exact_case:
        assert not near.any(), "a designed case must have no near-tie picks"
    assert near.mean() <= MAX_NEAR_TIES


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_nearest_distance_matches_reference(backend: str, case: str, request: pytest.FixtureRequest) -> None:
    c = CASES[case]()
    queries, bank = c["queries"], c["bank"]
    ref = reference.nearest_distance(queries, bank).numpy()
    if c.get("expected_zero"):
        assert (ref == 0).all(), f"case {case} no longer has its designed property"
    dist, index = _run(backend, queries, bank, request)
    q32 = queries.float().numpy()
    _check(q32, bank.float().numpy(), dist, index, ref, c["exact"], c.get("expected_index"))
    if c.get("expected_zero"):
        assert (dist == 0).all()


def test_cpp_large_bank_in_chunks() -> None:
    """The guide's largest bank, 65,536 x 176 float16, at B * L = 256 (checked against the reference
    64 queries at a time: the reference's (N, M) score matrix)."""
    _need_cpp()
    from aminet_edge.ops import cpu

    g = _gen(20)
    M, C = 65536, 176
    bank = torch.randn(M, C, generator=g).half()
    pick = torch.randint(0, M, (128,), generator=g)
    queries = torch.cat([bank[pick].float() + 0.3 * torch.randn(128, C, generator=g),  # near a row
                         torch.randn(128, C, generator=g)]).reshape(1, 256, C)  # far from all
    dist = ops.nearest_distance(queries.numpy(), bank.numpy())
    _, index = cpu.nearest_distance(queries.reshape(256, C).numpy(), bank.numpy(), return_index=True)
    ref = torch.cat([reference.nearest_distance(chunk, bank) for chunk in queries.reshape(256, C).split(64)])
    q, b = queries.reshape(256, C).numpy().astype(np.float64), bank.float().numpy().astype(np.float64)
    for lo in range(0, 256, 64):  # the float64 check of _check, 64 queries at a time
        _check(q[lo:lo + 64], b, dist[0, lo:lo + 64], index[lo:lo + 64], ref[lo:lo + 64].numpy(), exact_case=False)
    assert (index[:128] == pick.numpy()).mean() > 0.99  # the row each near query was made from


def _subprocess(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("isa", ["", "avx2", "baseline"], ids=["widest", "avx2", "baseline"])
def test_cpp_every_instruction_set_and_thread_count(isa: str, tmp_path: Path) -> None:
    """The x86 build carries AVX-512, AVX2 and baseline work items (AMINET_NEAREST_ISA caps the choice; on a
    CPU without the ISA asked for, a lower one runs): each matches the reference, and within one ISA each
    score is one FMA chain over C whatever the split of the bank, so 1, 2 and 3 threads (different numbers of
    bank chunks) give identical distances and rows."""
    _need_cpp()
    code = """
        import sys, numpy as np
        from aminet_edge.ops import cpu
        rng = np.random.default_rng(0)
        q = rng.standard_normal((300, 40)).astype(np.float32)
        b = rng.standard_normal((5000, 40)).astype(np.float16)
        b[[4000, 2500]] = b[17]
        q[:5] = b[17]
        d, i = cpu.nearest_distance(q, b, return_index=True)
        np.savez(sys.argv[1], q=q, b=b, d=d, i=i)
    """
    runs = []
    for threads in (1, 2, 3):
        out = tmp_path / f"t{threads}.npz"
        _subprocess(code, str(out), OMP_NUM_THREADS=str(threads), AMINET_NEAREST_ISA=isa)
        with np.load(out) as data:
            runs.append({k: data[k] for k in data.files})
    first = runs[0]
    assert (first["i"][:5] == 17).all()
    ref = reference.nearest_distance(torch.from_numpy(first["q"]), torch.from_numpy(first["b"])).numpy()
    _check(first["q"], first["b"].astype(np.float32), first["d"], first["i"], ref, exact_case=False)
    for run in runs[1:]:
        np.testing.assert_array_equal(run["d"], first["d"])
        np.testing.assert_array_equal(run["i"], first["i"])


def test_cpp_memory_does_not_grow_with_n_times_m() -> None:
    """4,096 queries x 65,536 rows: the full float32 score matrix would be 1 GiB. The kernel's documented
    workspace (nearest_workspace_bytes) is a few MiB and does not grow with M, and the process's peak
    resident memory (ru_maxrss, in a fresh numpy-only process) grows by less than 64 MiB over the call."""
    _need_cpp()
    from aminet_edge.ops import cpu

    N, M, C = 4096, 65536, 8
    small, large = cpu.nearest_workspace_bytes(N, 4096, C), cpu.nearest_workspace_bytes(N, M, C)
    assert large == small and large < 16 << 20, (small, large)
    assert cpu.nearest_workspace_bytes(256, M, 176) < 4 << 20
    proc = _subprocess("""
        import resource, sys
        import numpy as np
        from aminet_edge.ops import cpu
        N, M, C = (int(a) for a in sys.argv[1:4])
        rng = np.random.default_rng(0)
        q = rng.standard_normal((N, C)).astype(np.float32)
        b = rng.standard_normal((M, C)).astype(np.float16)
        cpu.nearest_distance(q[:1], b[:64])  # OpenMP threads and their stacks exist before the measure
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        d = cpu.nearest_distance(q, b)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert d.shape == (N,) and np.isfinite(d).all()
        print((after - before) * 1024)
    """, str(N), str(M), str(C))
    grown = int(proc.stdout.strip().splitlines()[-1])
    assert grown < 64 << 20, f"peak RSS grew by {grown / 2**20:.0f} MiB (the full matrix: {N * M * 4 / 2**30:.0f} GiB)"


@pytest.mark.parametrize("make", [lambda x: x, lambda x: x.numpy()], ids=["torch", "numpy"])
@pytest.mark.parametrize("queries, bank, error, words", [
    (torch.zeros(2, 5, 7), torch.zeros(10, 8), ValueError, ["queries", "(2, 5, 7)", "C = 8", "float32"]),
    (torch.zeros(3, 8), torch.zeros(80), ValueError, ["bank", "(80,)"]),
    (torch.zeros(3, 8), torch.zeros(0, 8), ValueError, ["bank", "(0, 8)", "M >= 1"]),
    (torch.zeros(3, 8), torch.zeros(10, 8, dtype=torch.float64), TypeError, ["bank", "float64", "(10, 8)"]),
    (torch.zeros(3, 8, dtype=torch.int64), torch.zeros(10, 8), TypeError, ["queries", "int64", "(3, 8)"]),
    (torch.zeros(()), torch.zeros(10, 8), ValueError, ["queries", "()"]),
])
def test_bad_inputs_name_the_argument_shape_and_dtype(make, queries, bank, error, words) -> None:
    for backend in ("auto", "reference"):
        with pytest.raises(error) as info:
            ops.nearest_distance(make(queries), make(bank), backend=backend)
        for word in words:
            assert word in str(info.value), (word, str(info.value))


def test_mixed_kinds_and_unknown_backend_are_refused() -> None:
    with pytest.raises(TypeError, match="same place"):
        ops.nearest_distance(np.zeros((3, 8), np.float32), torch.zeros(10, 8))
    with pytest.raises(ValueError, match="unknown backend"):
        ops.nearest_distance(torch.zeros(3, 8), torch.zeros(10, 8), backend="fast")
    assert ops.select_backend("nearest_distance", "numpy") in ("cpp",)


if __name__ == WORKER:
    save_case_outputs(CASES, _triton_case, sys.argv[1])
