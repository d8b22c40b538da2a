"""Options several commands share: the trust model for code a config names."""
from __future__ import annotations

import click


def trust_options(command):
    """``--allow-module PREFIX`` (repeatable) and ``--trust-config``: which modules a config may
    name (``package.module:Name``) and so import. Nothing else is imported (README: "Your own
    strategy, model or benchmark")."""
    command = click.option("--trust-config", is_flag=True,
                           help="Trust the config file: any module it names may be imported (as '*').")(command)
    command = click.option("--allow-module", "allow_module", multiple=True, metavar="PREFIX",
                           help="Allow the config to name (and so import) modules under PREFIX, e.g. my_lab; "
                                "repeatable. Also: LIFELONG_ALLOW_MODULES=my_lab,other.")(command)
    return command


def apply_trust(allow_module, trust_config) -> None:
    from ..registry import allow_modules

    prefixes = list(allow_module) + (["*"] if trust_config else [])
    if prefixes:
        allow_modules(prefixes)
