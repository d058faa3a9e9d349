"""What a user names as a model: a transformers config (a `config.json`, a folder holding one,
or a config class such as `LlamaConfig`), or `FILE.py:FUNCTION` for any other module.

`FUNCTION()` returns `(module, args)` or `(module, args, kwargs)`, the module in the mode to
trace (`.eval()` for inference); it is called under fake tensors, so it may build production
sizes freely. No weights are ever loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from kevolve.models.trace import ModelCase, ModelError


def resolve_model(source: str, *, batch: int = 1, seq: int = 2048, dtype: str | None = None,
                  overrides: Mapping[str, Any] | None = None, attn: str = "eager") -> ModelCase:
    """A traceable case for what the user named (see the module docstring)."""
    if re.search(r"\.py:[A-Za-z_]\w*$", source):
        return from_python(source)
    return from_transformers_config(load_config(source, overrides or {}), batch=batch, seq=seq,
                                    dtype=dtype, attn=attn)


def from_python(source: str) -> ModelCase:
    file_part, func_name = source.rsplit(":", 1)
    path = Path(file_part)
    if not path.is_file():
        raise ModelError(f"{file_part}: file not found")
    from kevolve.specs.kernelbench_format import load_module

    try:
        module = load_module(path.resolve())
    except Exception as exc:
        raise ModelError(f"{file_part}: does not import: {type(exc).__name__}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ModelError(f"{file_part}: has no function {func_name}")

    def build():
        result = func()
        if not (isinstance(result, tuple) and len(result) in (2, 3)
                and isinstance(result[0], torch.nn.Module)):
            raise ModelError(f"{source} must return (module, args) or (module, args, kwargs)")
        model, args = result[0], result[1]
        kwargs = result[2] if len(result) == 3 else {}
        return model, tuple(args) if isinstance(args, (list, tuple)) else (args,), dict(kwargs)

    return ModelCase(name=f"{path.stem}.{func_name}", build=build)


def load_config(source: str, overrides: Mapping[str, Any]):
    """A transformers config from a path or a class name, with `overrides` applied."""
    import transformers

    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ModelError(f"{source}: no config.json there")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        model_type = doc.pop("model_type", None)
        if not model_type:
            raise ModelError(f"{path}: no model_type; it must be a transformers config.json")
        try:
            config = transformers.AutoConfig.for_model(model_type, **{**doc, **overrides})
        except ValueError as exc:
            raise ModelError(f"{path}: {exc}".splitlines()[0]) from None
        return config
    cls = getattr(transformers, source, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PretrainedConfig)):
        raise ModelError(f"{source!r} is neither a config.json, a folder holding one, a transformers "
                         "config class (e.g. LlamaConfig), nor FILE.py:FUNCTION")
    return cls(**overrides)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs from the command line; values read as YAML scalars (64, 1e-6, true)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ModelError(f"--set {item!r}: expected KEY=VALUE, e.g. --set hidden_size=4096")
        out[key] = yaml.safe_load(value)
    return out


def config_dtype(config) -> str:
    # transformers 5 calls it dtype (and warns on torch_dtype); 4.x torch_dtype.
    value = getattr(config, "dtype" if hasattr(config, "dtype") else "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value) if value else "bfloat16"


def from_transformers_config(config, *, batch: int, seq: int, dtype: str | None,
                             attn: str) -> ModelCase:
    import transformers

    from kevolve.specs.model import resolve_dtype

    dtype_name = resolve_dtype(dtype or config_dtype(config))
    if dtype_name is None or dtype_name not in ("float32", "bfloat16", "float16"):
        raise ModelError(f"dtype {dtype!r}: use float32, bfloat16 or float16")
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab <= 0:
        raise ModelError(f"{type(config).__name__} has no vocab_size; give FILE.py:FUNCTION for "
                         "models that do not take token ids")
    name = getattr(config, "model_type", type(config).__name__)

    def build():
        kwargs = {"attn_implementation": attn, "dtype": getattr(torch, dtype_name)}
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, **kwargs)
        except ValueError:  # not a causal LM: the bare model
            model = transformers.AutoModel.from_config(config, **kwargs)
        ids = torch.randint(0, vocab, (batch, seq))
        return model.eval(), (), {"input_ids": ids, "use_cache": False}

    return ModelCase(name=str(name), build=build)
