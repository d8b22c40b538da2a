"""Run the ``lifelong`` command in-process: (exit code, stdout, stderr)."""
import pytest

from lifelong.cli import main


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err
