"""`aminet-edge station CONFIG`, `station --example-config` and `station results`: thin verbs over the API."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click


def _since(value: str | None) -> float | None:
    """An ISO 8601 time (UTC unless it says otherwise) or epoch seconds, as epoch seconds."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: give an ISO time (2026-12-07T10:00:00) or epoch seconds") from exc
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


class _StationGroup(click.Group):
    """`station CONFIG` runs the station; `station results ...` reads the store."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


def _example(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        from aminet_edge.station.config import EXAMPLE_CONFIG

        click.echo(EXAMPLE_CONFIG, nl=False)
        ctx.exit(0)


@click.group("station", cls=_StationGroup, invoke_without_command=False)
@click.option("--example-config", is_flag=True, expose_value=False, is_eager=True, callback=_example,
              help="Print a commented example config and exit.")
def station_cmd() -> None:
    """Inspection station: `aminet-edge station CONFIG` runs the cameras of CONFIG (a TOML file) until
    SIGTERM / Ctrl-C; `aminet-edge station results CONFIG` prints the stored results."""


def _config(path: str, check_paths: bool = True) -> Any:
    from aminet_edge.station.config import StationConfigError, load_config

    try:
        return load_config(path, check_paths=check_paths)
    except StationConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@station_cmd.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--check", is_flag=True, help="Validate CONFIG and exit.")
@click.option("--web", "web_address", metavar="HOST:PORT",
              help="Serve the live view there (overrides CONFIG's [web] host and port; 127.0.0.1:8090 by default).")
def run_cmd(config: str, check: bool, web_address: str | None) -> None:
    """Run the station of CONFIG until SIGTERM / SIGINT, or until every source is exhausted (video files).
    With --web or a [web] table in CONFIG, also its live view (docs/station.md, "Live view")."""
    from aminet_edge.cli import _run
    from aminet_edge.station.config import WebConfig
    from aminet_edge.station.station import Station

    cfg = _config(config)
    web_cfg = cfg.web
    if web_address is not None:
        from aminet_edge.station.web import parse_address

        try:
            host, port = parse_address(web_address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--web") from exc
        web_cfg = dataclasses.replace(web_cfg or WebConfig(), host=host, port=port)
    if check:
        click.echo(f"{config}: ok ({len(cfg.cameras)} camera(s))")
        return
    station = _run(Station, cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        station.start()
    except OSError as exc:  # e.g. an output's port already in use
        raise click.ClickException(f"the station could not start: {exc}") from exc
    view = None
    if web_cfg is not None:
        from aminet_edge.station.web import LiveView

        try:
            view = LiveView(station, web_cfg).start()
        except (OSError, ImportError) as exc:  # the port in use; aiohttp missing
            station.stop()
            raise click.ClickException(f"the station could not start: {exc}") from exc
    click.echo(f"station running: {', '.join(station.cameras)}; outputs: {', '.join(station.outputs) or 'none'}"
               + (f"; live view: {view.url}" if view is not None else ""), err=True)
    station.wait(stop=stop)
    flushed = station.stop()
    if view is not None:
        view.stop()
    click.echo(json.dumps({"stopped": True, "flushed": flushed}), err=True)
    refused = [f"camera {name}: {cam.source_status}" for name, cam in station.cameras.items()
               if cam.source_status.startswith("refused")]
    if refused:  # e.g. a camera without the trigger line asked for: a config to fix, not a fault to retry
        raise click.ClickException("; ".join(refused))


@station_cmd.command("results")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--since", help="Only results from this time on (ISO 8601, UTC unless stated, or epoch seconds).")
@click.option("--camera", help="Only this camera's results.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header (default: one JSON object per line).")
def results_cmd(source: str, since: str | None, camera: str | None, as_csv: bool) -> None:
    """Print the results stored by a station: SOURCE is its config (TOML) or its store (.db)."""
    from aminet_edge.station.store import ResultStore, iso_time, rows_to_csv

    path = Path(source)
    if path.suffix == ".toml":
        path = _config(source, check_paths=False).store
        if not path.is_file():
            raise click.ClickException(f"{path}: no result store yet (the station has not run)")
    store = ResultStore(path)
    try:
        rows = store.query(_since(since), camera)
        if as_csv:
            click.echo(rows_to_csv(rows), nl=False)
        else:
            for row in rows:
                click.echo(json.dumps({**row, "time_iso": iso_time(row["time"])}))
    finally:
        store.close()
