"""The GPU code builds without a GPU, and on a GPU the CUDA kernels run through the ctypes C API.

CUDA sources (csrc/cuda/); without nvcc these skip with that reason:
- each .cu compiles for Jetson Orin (sm_87) without warnings, with every kernel's static shared memory
  well under the 48 KB default limit (a 68 KB kernel once failed to launch) and no register spills;
- each .cu compiles for the full default architecture list CMake derives for this nvcc
  (cmake/cuda_architectures.cmake, one place), and that list follows the toolkit version;
- libaminet_cuda.so links, loads through aminet_edge.ops.cuda, exports exactly the C API, and its host
  function (the smoothing matrix) matches the reference without a GPU; a library of another C API version
  is refused at load (its argument lists differ, so calls would read garbage).
Triton kernels (aminet_edge/ops/triton/): compiled ahead of time to cubins for sm_87, sm_90 and sm_120
with Triton's own ptxas, so the compiled path (not only the interpreter the op tests use) is checked.
The gpu-marked test builds the library for the GPU present and runs both ops on torch CUDA tensors.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["csrc/cuda/adaptive_mask.cu", "csrc/cuda/score_map.cu"]
C_API = {
    "aminet_cuda_api_version",
    "aminet_cuda_device_count",
    "aminet_cuda_error_string",
    "aminet_adaptive_mask",
    "aminet_smoothing_matrix",
    "aminet_score_map_workspace_bytes",
    "aminet_score_map",
}
SMEM_LIMIT = 48 * 1024
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA kernels cannot be compiled here")


CMAKE = shutil.which("cmake")
needs_cmake = pytest.mark.skipif(CMAKE is None, reason="cmake not found: the default architecture list is CMake code")


def _cmake_architectures(*definition: str) -> subprocess.CompletedProcess:
    """Run cmake/cuda_architectures.cmake (what CMakeLists.txt includes) in script mode; it prints the list."""
    assert CMAKE is not None
    return subprocess.run([CMAKE, *definition, "-P", str(ROOT / "cmake/cuda_architectures.cmake")],
                          capture_output=True, text=True, timeout=60)


def _default_architectures() -> list[str]:
    """The default list CMakeLists.txt derives for the nvcc on PATH."""
    proc = _cmake_architectures(f"-DAMINET_NVCC={NVCC}")
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.strip().split(";")  # message() writes to stderr


@needs_cmake
@pytest.mark.parametrize("version, want", [
    ("11.4", "87;80;86"), ("11.8", "87;80;86;89;90"), ("12.6", "87;80;86;89;90"), ("12.8", "87;80;86;89;90;120"),
    ("13.0", "87;80;86;89;90;120"),
])
def test_default_architectures_follow_the_toolkit_version(version: str, want: str) -> None:
    """sm_120 only from CUDA 12.8, sm_89/90 from 11.8 (what each nvcc release can compile)."""
    proc = _cmake_architectures(f"-DAMINET_CUDA_VERSION={version}")
    assert proc.returncode == 0 and proc.stderr.strip() == want, proc.stderr


@needs_cmake
def test_old_toolkits_warn_or_refuse() -> None:
    proc = _cmake_architectures("-DAMINET_CUDA_VERSION=11.2")
    assert proc.returncode == 0 and "cannot compile for Jetson Orin" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "80;86"
    proc = _cmake_architectures("-DAMINET_CUDA_VERSION=10.2")
    assert proc.returncode != 0 and "compiles none of the supported architectures" in proc.stderr


def _nvcc(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    assert NVCC is not None
    cmd = [NVCC, "-std=c++17", "-O3", "-I", str(ROOT / "csrc/include"), "-I", str(ROOT / "csrc/cuda"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_for_orin_within_shared_memory(source: str, tmp_path: Path) -> None:
    proc = _nvcc(["-arch=sm_87", "-Xptxas", "-v", "-c", source, "-o", str(tmp_path / "k.o")])
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    smem = [int(x) for x in re.findall(r"(\d+) bytes smem", proc.stderr)]
    assert smem, "ptxas -v printed no kernel resource usage"
    assert max(smem) < SMEM_LIMIT // 2, f"static shared memory {max(smem)} B per block is not well under 48 KB"
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", proc.stderr)]
    assert not any(spills), f"register spills: {proc.stderr}"


@needs_nvcc
@needs_cmake
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_for_default_architectures(source: str, tmp_path: Path) -> None:
    archs = _default_architectures()
    assert "87" in archs, "Jetson Orin (sm_87) must stay in the default list"
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    proc = _nvcc([*gencode, "--threads", "0", "-c", source, "-o", str(tmp_path / "k.o")])
    assert proc.returncode == 0, proc.stderr


def library_arch() -> str:
    """nvcc's -arch for the test library: the visible GPU's compute capability as torch reports it (an
    explicit sm_XY: -arch=native needs a driver nvcc can query), else Jetson Orin's sm_87."""
    try:
        import torch
    except ImportError:
        return "-arch=sm_87"
    if not torch.cuda.is_available():
        return "-arch=sm_87"
    major, minor = torch.cuda.get_device_capability(0)
    return f"-arch=sm_{major}{minor}"


def test_library_arch_follows_the_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert library_arch() == "-arch=sm_87"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    assert library_arch() == "-arch=sm_90"  # H100 / H200: compiled by test_compiles_for_default_architectures


@pytest.fixture(scope="module")
def built_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libaminet_cuda.so for sm_87 (or the local GPU's architecture when one is visible: `library_arch`)."""
    if NVCC is None:
        pytest.skip("nvcc not found: the CUDA kernels cannot be compiled here")
    lib = tmp_path_factory.mktemp("cuda") / "libaminet_cuda.so"
    proc = _nvcc([library_arch(), "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-cudart", "static", *SOURCES,
                  "-o", str(lib)])
    assert proc.returncode == 0, proc.stderr
    return lib


def test_library_links_loads_and_exports_the_c_api(built_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aminet_edge.ops import cuda

    monkeypatch.setenv("AMINET_CUDA_LIB", str(built_library))
    assert cuda.library_path() == built_library
    lib = cuda.library()
    assert lib.aminet_cuda_api_version() == cuda.API_VERSION
    assert cuda.device_count() >= 0  # no driver or no GPU reads as 0, not a crash
    if cuda.device_count() == 0:
        assert "no CUDA GPU" in (cuda.unavailable_reason() or "")
    if shutil.which("nm"):
        out = subprocess.run(["nm", "-D", "--defined-only", str(built_library)], capture_output=True, text=True)
        exported = {line.split()[-1] for line in out.stdout.splitlines() if " T " in line}
        assert C_API <= exported, f"missing: {C_API - exported}"
        assert not {s for s in exported if s.startswith("_Z")}, "C++ symbols leak from the library"
    torch = pytest.importorskip("torch")
    from aminet_edge.ops import reference

    for in_size, out_size, sigma in [(64, 256, 4.0), (7, 23, 1.0), (5, 5, 0.0), (4, 8, 2.0)]:
        got = cuda.smoothing_matrix(in_size, out_size, sigma)
        np.testing.assert_allclose(got, reference.smoothing_matrix(in_size, out_size, sigma).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="sizes"):
        cuda.smoothing_matrix(0, 8, 2.0)
    del torch


def test_missing_library_says_how_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aminet_edge.ops import cuda

    monkeypatch.setenv("AMINET_CUDA_LIB", str(tmp_path / "absent.so"))
    reason = cuda.unavailable_reason()
    assert reason is not None and "cmake" in reason
    with pytest.raises(RuntimeError, match="cmake"):
        cuda.library()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build a stand-in library")
def test_library_of_another_api_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aminet_edge.ops import cuda

    src = tmp_path / "old.c"
    src.write_text(f"int aminet_cuda_api_version(void) {{ return {cuda.API_VERSION - 1}; }}\n")
    lib = tmp_path / "libold.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True, timeout=60)
    monkeypatch.setenv("AMINET_CUDA_LIB", str(lib))
    with pytest.raises(RuntimeError, match=f"C API version {cuda.API_VERSION - 1}.*rebuild"):
        cuda.library()
    assert "rebuild" in (cuda.unavailable_reason() or "")


@pytest.mark.gpu
def test_cuda_kernels_run_on_torch_cuda_tensors(built_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on the GPU at the paper's shapes: build, load, launch on the current stream, compare."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    from aminet_edge import ops
    from aminet_edge.ops import reference

    monkeypatch.setenv("AMINET_CUDA_LIB", str(built_library))
    g = torch.Generator().manual_seed(0)
    tokens, centers = torch.randn(8, 256, 768, generator=g), torch.randn(8, 8, 768, generator=g)
    mask, dist, assign = (o.cpu() for o in ops.adaptive_mask(tokens.cuda(), centers.cuda(), 0.5, backend="cuda"))
    ref_mask, ref_dist, ref_assign = reference.adaptive_mask(tokens, centers, 0.5)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-5, atol=1e-6 * float(ref_dist.abs().max()))
    assert (assign == ref_assign).float().mean() > 0.999 and (mask == ref_mask).float().mean() > 0.999

    feat = torch.randn(2, 1792, 64, 64, generator=g)
    recon = feat + 0.3 * torch.randn(feat.shape, generator=g)
    amap, score = (o.cpu() for o in ops.score_map(feat.cuda(), recon.cuda(), (256, 256), 4.0, backend="cuda"))
    ref_map, ref_score = reference.score_map(feat, recon, (256, 256), 4.0)
    torch.testing.assert_close(amap, ref_map, rtol=1e-4, atol=1e-5 * float(ref_map.abs().max()))
    torch.testing.assert_close(score, ref_score, rtol=1e-4, atol=0.0)
    token_map = torch.rand(2, 16, 16, generator=g)  # the ViT token grid, coarser than feat's
    amap, score = (o.cpu() for o in ops.score_map(feat.cuda(), recon.cuda(), (256, 256), 4.0, backend="cuda",
                                                  token_map=token_map.cuda(), token_weight=0.5))
    ref_map, ref_score = reference.score_map(feat, recon, (256, 256), 4.0, token_map=token_map, token_weight=0.5)
    torch.testing.assert_close(amap, ref_map, rtol=1e-4, atol=1e-5 * float(ref_map.abs().max()))
    torch.testing.assert_close(score, ref_score, rtol=1e-4, atol=0.0)


def _triton_specs() -> list[tuple]:
    """(kernel, signature, constexprs) of every Triton kernel, in the types the wrappers launch them with."""
    import inspect

    from aminet_edge.ops.triton import adaptive_mask as am
    from aminet_edge.ops.triton import nearest_distance as nd
    from aminet_edge.ops.triton import score_map as sm

    def sig(kernel, types: dict) -> dict:
        return {name: types[name] for name in inspect.signature(kernel.fn).parameters}

    i32 = "i32"
    specs = []
    for dt in ("*fp32", "*fp16"):
        specs.append((am._assign_kernel, sig(am._assign_kernel, dict(
            tok_ptr=dt, cen_ptr=dt, dist_ptr="*fp32", asg_ptr="*i64", L=i32, P=i32, D=i32,
            BLOCK_L="constexpr", BLOCK_D="constexpr")), dict(BLOCK_L=16, BLOCK_D=128)))
        specs.append((sm._cell_kernel, sig(sm._cell_kernel, dict(
            f_ptr=dt, r_ptr=dt, maps_ptr="*fp32", C=i32, HW=i32, BLOCK_C="constexpr", BLOCK_N="constexpr")),
            dict(BLOCK_C=8, BLOCK_N=128)))
        blocks = dict(BLOCK_N=nd.BLOCK_N, BLOCK_M=nd.BLOCK_M, BLOCK_C=nd.BLOCK_C)
        specs.append((nd._search_kernel, sig(nd._search_kernel, dict(
            q_ptr="*fp32", b_ptr=dt, score_ptr="*fp32", index_ptr="*i32", N=i32, M=i32, C=i32, rows_per_chunk=i32,
            BLOCK_N="constexpr", BLOCK_M="constexpr", BLOCK_C="constexpr")), blocks))
        specs.append((nd._finish_kernel, sig(nd._finish_kernel, dict(
            q_ptr="*fp32", b_ptr=dt, score_ptr="*fp32", index_ptr="*i32", dist_ptr="*fp32", row_ptr="*i64", N=i32,
            C=i32, chunks=i32, BLOCK_N="constexpr", BLOCK_C="constexpr")),
            dict(BLOCK_N=nd.BLOCK_N, BLOCK_C=nd.BLOCK_C)))
    specs.append((am._mask_kernel, sig(am._mask_kernel, dict(
        dist_ptr="*fp32", asg_ptr="*i64", mask_ptr="*i1", L=i32, P=i32, lam="fp32", BLOCK="constexpr")),
        dict(BLOCK=256)))
    smooth = {n: i32 for n in ("M", "N", "K", "l_bs", "l_pair", "l_rs", "l_cs", "r_bs", "r_pair", "r_rs", "r_cs",
                               "y_bs")}
    smooth.update(l_ptr="*fp32", r_ptr="*fp32", y_ptr="*fp32", alpha="fp32", PRODUCT="constexpr", ADD="constexpr",
                  BM="constexpr", BN="constexpr", BK="constexpr")
    for product, add in ((False, False), (True, False), (False, True)):
        specs.append((sm._smooth_kernel, sig(sm._smooth_kernel, smooth),
                      dict(PRODUCT=product, ADD=add, BM=32, BN=32, BK=16)))
    for use_max in (False, True):
        specs.append((sm._score_kernel, sig(sm._score_kernel, dict(
            amap_ptr="*fp32", score_ptr="*fp32", n=i32, USE_MAX="constexpr", BLOCK="constexpr")),
            dict(USE_MAX=use_max, BLOCK=1024)))
    return specs


@pytest.mark.parametrize("arch", [87, 90, 120])
def test_triton_kernels_compile_for_gpu_targets(arch: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ahead-of-time compile of every Triton kernel to a cubin, no GPU needed (Triton ships ptxas): the
    compiled path, which the interpreter-run tests do not exercise, type-checks and fits shared memory."""
    pytest.importorskip("torch")
    triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'aminet-edge[gpu]')")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set: the kernels were decorated for the interpreter")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # a real compile, not a cache hit
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated to silence its warning
    for kernel, signature, constexprs in _triton_specs():
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
        assert compiled.metadata.shared < SMEM_LIMIT // 2, f"{kernel.fn.__name__}: {compiled.metadata.shared} B"
