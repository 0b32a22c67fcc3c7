"""CLI verbs `aminet-edge triton-repo` and `aminet-edge serve` (thin: parse, call aminet_edge.serving, print)."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import click

from aminet_edge.serving.protocol import MODEL_NAME

_queue = [
    click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
                 help="Largest batch the dynamic batcher forms."),
    click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Model instances (cpu: processes sharing the cores; gpu: TensorRT instances)."),
    click.option("--queue-size", type=click.IntRange(min=1), default=64, show_default=True,
                 help="Requests waiting per model before Triton rejects new ones (back-pressure)."),
    click.option("--max-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
                 help="Longest wait to fill a batch, microseconds."),
]


def _with_queue(f):  # type: ignore[no-untyped-def]
    for option in reversed(_queue):
        f = option(f)
    return f


@click.command("triton-repo")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--target", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="cpu: Python backend on the torch-free runtime; gpu: ensemble around the TensorRT plan "
                   "(plus a DeepStream nvinferserver config).")
@_with_queue
@click.option("--model-name", default=MODEL_NAME, show_default=True)
def triton_repo_cmd(run: str, out: str, target: str, max_batch: int, instances: int, queue_size: int,
                    max_delay_us: int, model_name: str) -> None:
    """Write a Triton model repository for bundle RUN into OUT (see docs/serving.md)."""
    from aminet_edge.bundle import BundleError
    from aminet_edge.serving.repository import QueuePolicy, describe_repository, write_repository

    try:
        notes = write_repository(run, out, target, max_batch=max_batch, instances=instances, model_name=model_name,
                                 policy=QueuePolicy(max_delay_us, queue_size))
    except (BundleError, ValueError, ImportError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(describe_repository(out, model_name))
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"repository: {out}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command("serve")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: all).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@_with_queue
@click.option("--repository", type=click.Path(file_okay=False),
              help="Write the cpu repository here and keep it [default: a temporary folder].")
def serve_cmd(run: str, host: str, http_port: int, grpc_port: int, max_batch: int, instances: int,
              queue_size: int, max_delay_us: int, repository: str | None) -> None:
    """Serve bundle RUN on Triton (cpu repository) in the foreground until Ctrl-C or SIGTERM; a server
    that exits is restarted (logged), and it stops when this process dies."""
    from aminet_edge.bundle import BundleError
    from aminet_edge.serving.repository import QueuePolicy, write_repository
    from aminet_edge.serving.server import ServerError, TritonServer, supervise

    with tempfile.TemporaryDirectory(prefix="aminet-serve-") as tmp:
        repo = Path(repository) if repository else Path(tmp) / "repository"
        try:
            write_repository(run, repo, "cpu", max_batch=max_batch, instances=instances,
                             policy=QueuePolicy(max_delay_us, queue_size))
            server = TritonServer(repo, host=host, http_port=http_port, grpc_port=grpc_port)
        except (BundleError, ValueError, ImportError, OSError, ServerError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"starting {server.binary} (log: {server.log_path})", err=True)
        try:
            server.start()
        except ServerError as exc:
            server.close()
            raise click.ClickException(str(exc)) from exc
        signal.signal(signal.SIGTERM, _interrupt)  # `systemctl stop` / docker stop: stop the server too
        pid = server.process.pid if server.process is not None else None
        click.echo(f"healthy: model {MODEL_NAME!r} at {server.url} (HTTP), {host}:{grpc_port} (gRPC); "
                   f"RemoteDetector({server.url!r}); tritonserver pid {pid}; Ctrl-C stops")
        try:
            supervise(server, lambda message: click.echo(message, err=True))
        except ServerError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            click.echo("stopping", err=True)
        finally:
            server.close()
