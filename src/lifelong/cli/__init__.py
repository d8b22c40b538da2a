"""The ``lifelong`` command. One module per command, plus the shared pieces:

| module | job |
|---|---|
| ``run.py`` | ``lifelong run``: one run, or a sweep of strategies x seeds |
| ``sweep.py`` | a config + flags -> the validated list of run configs; seeds; the summary over seeds |
| ``listing.py`` | ``lifelong list``: benchmarks and strategies with their parameters |
| ``report.py`` | ``lifelong report``: HTML report of run folders |
| ``reproduce.py`` | ``lifelong reproduce``: a paper's table and a verdict per cell |
| ``adapt.py`` | ``lifelong adapt``: test-time adaptation on a corrupted stream |
| ``tune.py`` | ``lifelong tune``: hyper-parameter search under an honest protocol |
| ``soup.py`` | ``lifelong soup``: Sparse Model Soups of a run config (prune-retrain cycles, averaged retrains) |
| ``results.py`` | ``lifelong results``: list and compare studies, trials and runs; CSV export |
| ``tables.py`` | rendering: results, metrics, parameter and verdict tables |
| ``console.py`` | the consoles and progress displays |

A user error (:class:`~lifelong.errors.LifelongError`) is printed as one line and exits with
status 2, without a traceback.
"""
from __future__ import annotations

import sys

import click

from ..errors import LifelongError
from .adapt import adapt_cmd
from .console import err_console
from .listing import list_cmd
from .report import report_cmd
from .reproduce import reproduce_cmd
from .run import run_cmd
from .soup import soup_cmd
from .results import results_cmd
from .tune import tune_cmd
from .sweep import parse_seeds

_parse_seeds = parse_seeds  # the old private name (benchmarks/ scripts import it)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lifelong")
def cli():
    """lifelong: continual learning on PyTorch."""


for _command in (run_cmd, list_cmd, report_cmd, reproduce_cmd, adapt_cmd, tune_cmd, results_cmd, soup_cmd):
    cli.add_command(_command)


def main(argv=None):
    try:
        cli.main(args=argv, standalone_mode=False)
    except LifelongError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; rerun the same command (or 'lifelong run --resume FOLDER') to continue "
                          "from the last checkpoint")
        sys.exit(130)


__all__ = ["cli", "main", "parse_seeds"]
