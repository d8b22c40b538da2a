"""Reproduce a paper's table from a declarative protocol file, and give a verdict per cell.

A protocol (``src/lifelong/protocols/<name>.yaml``, or any YAML file) holds: a citation; ``base``
settings in :class:`~lifelong.config.RunConfig` form; ``scenarios`` (config changes and per-method
hyper-parameters); ``methods``; ``published`` values (mean and s.e.m. per scenario x method);
a ``tolerance``; and ``notes``. See ``docs/protocols.md``.

The package is split where the jobs are:

- :mod:`.schema`: the protocol file's schema (strict pydantic models) and its error messages;
- :mod:`.protocol`: finding and loading a protocol (:func:`load_protocol`), checking its RunConfig
  fragments with the run config schema, and the config of each (scenario, method) cell;
- :mod:`.grid`: :func:`expand` turns a protocol and ``--set`` overrides into one resolved run
  config per (scenario, method, seed), each with a cache key (:func:`config_key`);
- :mod:`.store`: every finished run as one JSON file named after its key
  (:func:`run_and_store`, :func:`load_cached`), so an interrupted reproduction resumes where it
  stopped and a changed config is never mistaken for a finished one;
- :mod:`.verdicts`: :func:`summarize` computes, per cell, our mean and standard error over seeds,
  the difference to the published value and the verdict
  (PASS when ``|ours - published| <= max(points, se_multiplier * SE)``, default 3 points, 2 SE);
- :mod:`.render`: ``results.md`` and ``results.json``;
- :mod:`.driver`: :func:`reproduce`, which runs what is not stored yet through an executor
  (:func:`lifelong.executor.get_executor`) and writes the results.
"""
from ..stats import standard_error
from .driver import Reproduction, _Hooks, default_out, reproduce
from .grid import (CACHE_VERSION, EXECUTION_KEYS, Override, RunSpec, config_key, expand, modified_by,
                   parse_override, seed_list)
from .protocol import Protocol, available_protocols, check_configs, load_protocol, protocol_dir, validate_protocol
from .render import MODIFIED_BANNER, render_markdown, write_reports
from .schema import SCENARIOS, ProtocolFile, parse_protocol
from .store import cache_path, load_cached, run_and_store
from .verdicts import FAIL, MISSING, NA, PASS, summarize, verdict

__all__ = [
    "SCENARIOS", "EXECUTION_KEYS", "CACHE_VERSION", "PASS", "FAIL", "NA", "MISSING", "MODIFIED_BANNER",
    "Protocol", "ProtocolFile", "protocol_dir", "available_protocols", "load_protocol", "validate_protocol",
    "parse_protocol", "check_configs", "RunSpec", "config_key", "Override", "parse_override", "seed_list", "expand",
    "modified_by", "cache_path", "load_cached", "run_and_store", "standard_error", "verdict", "summarize",
    "render_markdown", "write_reports", "Reproduction", "default_out", "reproduce",
]
