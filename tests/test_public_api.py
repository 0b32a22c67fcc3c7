"""The public names `train`, `Detector` and `build_engine` are the same objects however and whenever
they are imported (a subpackage once shadowed `train`), and `import aminet_edge` alone loads no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import sys
    import aminet_edge
    assert "torch" not in sys.modules, "import aminet_edge imported torch"
    {first}
    from aminet_edge import Detector, build_engine, train
    from aminet_edge.export.engine import build_engine as engine_fn
    from aminet_edge.runtime.detector import Detector as detector_cls
    from aminet_edge.training.trainer import train as train_fn
    import aminet_edge.training.trainer, aminet_edge.export.engine  # importing submodules again changes nothing
    from aminet_edge import train as again
    assert (train, again, aminet_edge.train) == (train_fn, train_fn, train_fn), (train, again, aminet_edge.train)
    assert Detector is detector_cls is aminet_edge.Detector and build_engine is engine_fn is aminet_edge.build_engine
    assert callable(train) and train.__name__ == "train"
""")


@pytest.mark.parametrize("first", ["pass", "import aminet_edge.training.trainer", "aminet_edge.train"])
def test_public_names_import_the_same_every_time(first: str) -> None:
    pytest.importorskip("torch", reason="train and build_engine import torch when read")
    proc = subprocess.run([sys.executable, "-c", CHILD.format(first=first)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
