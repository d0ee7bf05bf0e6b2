"""Compress your own ``torch.nn.Module`` to a budget (``spec/compress.md``).

The practitioner's path as a package, one concern per module:

- :mod:`~kmr_ref.compress.config`: the typed config and its JSON Schema (``config.schema.json``),
  budgets with units, the method x meter table, the TOML reader;
- :mod:`~kmr_ref.compress.build`: sources, rules (with include/exclude), meters, policies;
- :mod:`~kmr_ref.compress.run`: Algorithm 10 over the phases, the streamed trace, resume;
- :mod:`~kmr_ref.compress.artifacts`: the packed model file, the manifest and :func:`load`;
- :mod:`~kmr_ref.compress.progress`: the live display.
"""

from kmr_ref.compress.artifacts import LoadError, load, packed_model, save_model, save_run
from kmr_ref.compress.build import build_meter, build_policy, build_rule, import_object, load_model
from kmr_ref.compress.config import (
    SPEC_VERSION,
    CompressConfig,
    ConfigError,
    GreedyConfig,
    HeadsMethod,
    LowRankMethod,
    PhaseConfig,
    PruneMethod,
    QuantizeMethod,
    ScheduledConfig,
    StructuredMethod,
    load_config,
    parse_budget,
    schema,
)
from kmr_ref.compress.run import CompressReport, ProgressSink, compress, read_trace

__all__ = [
    "SPEC_VERSION", "CompressConfig", "CompressReport", "ConfigError", "GreedyConfig", "LoadError", "LowRankMethod",
    "PhaseConfig", "ProgressSink", "PruneMethod", "QuantizeMethod", "ScheduledConfig", "StructuredMethod",
    "build_meter", "build_policy", "build_rule", "compress", "import_object", "load", "load_config", "load_model",
    "packed_model", "parse_budget", "read_trace", "save_model", "save_run", "schema",
]
__all__ += ["HeadsMethod"]
