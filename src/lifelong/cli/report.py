"""``lifelong report``: a self-contained HTML report of run or sweep folders."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (default: RUN_DIR/report for a single folder; required for several).")
@click.option("--force", is_flag=True, help="Replace report.html and its figures in an existing report folder.")
@click.option("--storage", help="The study store of the tune folders given (a .db file, sqlite:/// or postgresql:// "
                                "URL), instead of the one their tune.json names.")
def report_cmd(run_dirs, out_dir, force, storage):
    """Write a self-contained HTML report (with PNG figures) for run, sweep or tune folders."""
    from ..report import write_report

    click.echo(str(write_report(list(run_dirs), out_dir, force=force, storage=storage)))
