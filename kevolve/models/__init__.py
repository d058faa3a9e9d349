"""From a model to tuning specs: trace on fake tensors, recognise operators, rank by time."""

from kevolve.models.ops import Extraction, OpGroup, extract_ops
from kevolve.models.source import resolve_model
from kevolve.models.specgen import WrittenSpec, write_specs
from kevolve.models.trace import ModelCase, ModelError, trace_model

__all__ = ["Extraction", "ModelCase", "ModelError", "OpGroup", "WrittenSpec", "extract_ops",
           "resolve_model", "trace_model", "write_specs"]
