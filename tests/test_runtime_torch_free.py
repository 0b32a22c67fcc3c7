"""The edge runtime runs without torch: predict through onnxruntime (single graph, and split graphs + C++
kernels when built) in a subprocess where `import torch` fails, and match the torch reference.

The child sets sys.modules["torch"] = None before importing anything, so any `import torch` anywhere
(aminet_edge, the ops dispatcher, the data readers) raises ImportError. The bundle is built and the
reference predicted here, in the parent, with torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from test_detector import RTOL, detector, generated_images, shared_bundle  # noqa: E402

from aminet_edge.bundle import read_config  # noqa: E402
from aminet_edge.runtime.backends import backend_status  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # any import of torch now raises ImportError
    import json
    import numpy as np
    import aminet_edge
    from aminet_edge import Detector  # the lazy attribute must not pull torch in
    from aminet_edge.runtime import InputError
    bundle, images_file, backends = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    images = list(np.load(images_file).values())
    out = {}
    for name in backends:
        det = Detector.load(bundle, backend=name)
        results = det.predict(images)
        bad = det.predict([images[0], np.zeros((4, 4), np.uint8)])
        assert bad[0].ok and isinstance(bad[1].error, InputError)
        out[name] = {"backend": det.backend, "scores": [r.score for r in results],
                     "token_masks": [r.token_mask.astype(int).tolist() for r in results],
                     "map_max": [float(r.anomaly_map.max()) for r in results]}
    tiled = Detector.load(bundle, backend=backends[0], tile=(48, 12)).predict(images)  # aminet_edge.tiling
    out["tiled_scores"] = [r.score for r in tiled]
    auto = Detector.load(bundle)
    out["auto"] = auto.backend
    try:
        import torch  # noqa: F401
    except ImportError:
        out["torch_importable"] = False
    else:
        out["torch_importable"] = True
    out["torch_loaded"] = any(k == "torch" or k.startswith("torch.") for k, v in sys.modules.items()
                              if v is not None)
    print(json.dumps(out))
""")


def test_predict_without_torch(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    bundle = shared_bundle(tmp_path_factory)
    config = read_config(bundle)
    backends = ["onnxruntime"]
    for name in ("onnxruntime-split", "openvino", "openvino-split"):  # when installed / C++ kernels built
        if backend_status(name, bundle, config, "cpu") is None:
            backends.append(name)
    images = generated_images()
    np.savez(tmp_path / "images.npz", *images)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(bundle), str(tmp_path / "images.npz"),
                           ",".join(backends)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_importable"] is False and out["torch_loaded"] is False
    # auto measured without torch (or read an earlier measurement): the choice kept in the bundle's cache
    from aminet_edge.runtime.backends.auto import cached_choice

    assert out["auto"] == cached_choice(bundle, config).backend  # type: ignore[union-attr]
    want = detector(bundle, "torch", ops_backend="reference").predict(images)
    for name in backends:
        got = out[name]
        assert got["backend"] == name
        np.testing.assert_allclose(got["scores"], [r.score for r in want], rtol=RTOL)
        assert got["token_masks"] == [r.token_mask.astype(int).tolist() for r in want]
        np.testing.assert_allclose(got["map_max"], [float(r.anomaly_map.max()) for r in want], rtol=RTOL)
    tiled = detector(bundle, "torch", ops_backend="reference", tile=(48, 12)).predict(images)
    np.testing.assert_allclose(out["tiled_scores"], [r.score for r in tiled], rtol=RTOL)


def test_import_does_not_load_torch() -> None:
    code = ("import sys; import aminet_edge, aminet_edge.runtime, aminet_edge.runtime.commands; "
            "aminet_edge.Detector; print(any(k.split('.')[0] == 'torch' for k in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
