"""CLI verbs `aminet-edge export` and `aminet-edge build-engine` (thin: parse, call the API, print)."""

from __future__ import annotations

import warnings

import click

from aminet_edge.cli import device_option


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp16: backbone and transformers in float16, mask statistics and score map in float32 "
                   "(for TensorRT). int8: the fp32 graphs plus copies with the inpainting transformer's "
                   "MatMuls in int8, for CPUs (onnxruntime picks them up by default); with "
                   "--calibration-data also OpenVINO's int8 graph. Each int8 graph is then validated on "
                   "the bundle's held-out normal images (<= 0.5 % mask tokens changed, same decisions): "
                   "only accepted ones are timed by backend 'auto'.")
@click.option("--calibration-data", "calibration_data", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="With --precision int8: a data set (any layout `train` reads; its normal training images "
                   "are used, e.g. the ones trained on) to calibrate OpenVINO's int8 graph "
                   "model_int8_static.onnx (the inpainting branch in int8; backbone, clustering, mask and score "
                   "map fp32; needs aminet-edge[openvino]); repeatable.")
@click.option("--no-split", is_flag=True, help="Only the single graph model.onnx, not model_a/model_b.")
@device_option("cpu")
def export_cmd(run: str, precision: str, calibration_data: tuple[str, ...], no_split: bool, device: str) -> None:
    """Export bundle RUN to ONNX (opset 17, dynamic batch) inside the bundle; prints one path per graph."""
    from aminet_edge.export.graph_checks import GraphCheckError
    from aminet_edge.export.onnx_export import export_onnx

    try:
        paths = export_onnx(run, precision=precision, split=not no_split, device=device,
                            calibration_data=calibration_data)
    except (GraphCheckError, ValueError, ImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    for part, path in paths.items():
        click.echo(f"{part}: {path}")
    if precision == "int8":
        _validate_int8(run)


def held_out_images(run: str) -> tuple[list[str], str]:
    """The bundle's held-out normal images (re-derived from its recorded training data and split) and
    where they come from; ([], why not) when the data is not at hand or none were held out."""
    from aminet_edge.bundle import read_config
    from aminet_edge.training.trainer import recorded_split

    config = read_config(run)
    roots = config.train.get("roots") if isinstance(config.train, dict) else None
    if not roots:
        return [], "config.json records no training data (train.roots)"
    try:
        _, held = recorded_split(run, config.train, roots)
    except (ValueError, OSError) as exc:
        return [], str(exc)
    if not held:
        return [], "the bundle was trained without held-out images (few-shot, or fewer than 10 images)"
    return [s.path for s in held], f"{len(held)} held-out normal images of {', '.join(map(str, roots))}"


def _validate_int8(run: str) -> None:
    """Validate the int8 graphs on the bundle's held-out normals and print each verdict (runtime.int8_validation)."""
    from aminet_edge.runtime.int8_validation import validate_int8

    images, source = held_out_images(run)
    if not images:
        click.echo(f"int8 graphs not validated ({source}): `Detector.load(backend='auto')` will not time them; "
                   "they run only when asked for (precision='int8')", err=True)
        return
    for key, verdict in validate_int8(run, images).items():
        click.echo(f"{key}: " + (verdict if isinstance(verdict, str) else f"{verdict.summary()} on {source}"))


@click.command("build-engine")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--target", type=click.Choice(["rtx", "jetson", "auto"]), default="auto", show_default=True,
              help="rtx: TensorRT-RTX ahead of time, no GPU needed; jetson: TensorRT on the Jetson itself; "
                   "auto: from the GPU present: TensorRT on a Jetson, rtx for a GPU TensorRT-RTX targets "
                   "(SM 80/86/89/120/121) or no GPU, standard TensorRT for others (e.g. SM 90 H100/H200; "
                   "refused with what to do when only tensorrt_rtx is installed).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp16", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Engine file [default: RUN/engines/<backend>-<target>-<precision>.engine].")
@click.option("--batch", type=int, nargs=3, default=(1, 1, 8), show_default=True, help="MIN OPT MAX batch.")
@click.option("--workspace-mb", type=click.IntRange(min=1), default=None,
              help="Builder workspace limit in MiB [default: TensorRT's].")
@click.option("--arch", "arch", type=int, multiple=True,
              help="TensorRT-RTX compute capability, repeatable (e.g. --arch 86 --arch 89) "
                   "[default: 80 86 89 120; 75 (Turing) is not supported].")
@click.option("--split", is_flag=True,
              help="Build the two split-graph engines (model_a, model_b) for the custom-kernel runtime "
                   "instead of the single graph.")
def build_engine_cmd(run: str, target: str, precision: str, out: str | None, batch: tuple[int, int, int],
                     workspace_mb: int | None, arch: tuple[int, ...], split: bool) -> None:
    """Build a TensorRT(-RTX) engine for bundle RUN (exporting its ONNX graph first if missing) and record
    it in its config.json. Prints the engine path(s), the last line being the (last) engine."""
    from aminet_edge.export.engine import build_engine

    if split and out is not None:
        raise click.UsageError("--out names one file; --split builds two (default names are used)")
    graphs = ("model_a", "model_b") if split else ("model",)
    for graph in graphs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                path = build_engine(run, target=target, precision=precision, batch=batch,
                                    workspace=None if workspace_mb is None else workspace_mb << 20,
                                    compute_capabilities=list(arch) or None, out=out, graph=graph)
            except (ImportError, ValueError, RuntimeError) as exc:
                raise click.ClickException(str(exc)) from exc
            finally:
                for w in caught:
                    click.echo(f"warning: {w.message}", err=True)
        click.echo(str(path))
