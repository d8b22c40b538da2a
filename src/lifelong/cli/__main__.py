"""``python -m lifelong.cli``: the ``lifelong`` command."""
from . import main

main()
