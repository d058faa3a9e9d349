"""Compile a candidate's kernels for an H100 (sm_90) without a GPU: the wrapper runs on meta
tensors at the spec's tuned shape, each launch is recorded instead of run, and every recorded
kernel goes through triton.compile to a cubin. Catches what the interpreter lets through (types
the compiler rejects, constexpr misuse, shared memory over the limit).

    python tests/offline_sm90_compile.py 'SPEC.yaml::{"config": ...}' [...]
Run without TRITON_INTERPRET. Prints one line per kernel; exits 1 if any fails.
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
         torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
         torch.bool: "i1"}


def record_launches() -> list:
    launches = []

    def getitem(self, grid):
        return lambda *args, **kwargs: launches.append((self, args, kwargs))

    JITFunction.__getitem__ = getitem
    return launches


def signature(fn: JITFunction, args, kwargs) -> tuple[dict, dict]:
    sig, consts = {}, {}
    params = [p for p in fn.params]
    values = dict(zip([p.name for p in params], args))
    values.update({k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")})
    for p in params:
        v = values[p.name]
        if p.is_constexpr:
            sig[p.name], consts[p.name] = "constexpr", (False if p.name == "UPCAST" else v)
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + TYPES[v.dtype]
        elif isinstance(v, TensorDescriptor):  # the matmul's operands fetched by TMA
            sig[p.name] = f"tensordesc<{TYPES[v.base.dtype]}[{','.join(map(str, v.block_shape))}]>"
        elif v is None:  # an unused descriptor
            sig[p.name], consts[p.name] = "constexpr", None
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i64" if abs(v) >= 2 ** 31 else "i32"
        else:
            sig[p.name] = "fp32"
    return sig, consts


def main() -> int:
    from kevolve.specs import load_spec
    from kevolve.synth.offline import match_family, render

    failed = 0
    for arg in sys.argv[1:]:
        path, text = arg.split("::", 1)
        spec = load_spec(path)
        family = match_family(spec).family
        config = json.loads(text)
        module = types.ModuleType("sm90_candidate")
        source_file = Path(tempfile.mkdtemp()) / f"{spec.name}.py"  # triton reads kernels from a file
        source_file.write_text(render(spec, family, config))
        exec(compile(source_file.read_text(), str(source_file), "exec"), module.__dict__)
        launches = record_launches()
        inputs = [torch.empty(i.concrete_shape(spec.tune_dims), dtype=getattr(torch, i.dtype), device="meta")
                  for i in spec.inputs]
        getattr(module, spec.entry_point)(*inputs, **spec.params)
        for fn, args, kwargs in launches:
            sig, consts = signature(fn, args, kwargs)
            source = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
            options = {"num_warps": kwargs.get("num_warps", 4), "num_stages": kwargs.get("num_stages", 3)}
            try:
                compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
                print(f"ok {spec.name} {fn.__name__} shared={compiled.metadata.shared} {text}")
            except Exception as exc:
                failed += 1
                print(f"FAILED {spec.name} {fn.__name__} {text}: {type(exc).__name__}: {str(exc)[:400]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
