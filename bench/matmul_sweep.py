"""matmul_bias_relu (8192 x 4096 x 4096, bf16) on the GPU: the matmul template in a grid of tile
shapes, warps and stages, each with operand tiles by pointers and by TMA descriptors, one tile per
program and persistent, against eager PyTorch, torch.compile default and max-autotune (without
CUDA graphs). Medians of five rounds of triton.testing.do_bench (L2 flushed), each config checked
against a float32 reference first; TFLOP/s from 2*M*N*K. Then probes: the best config with
hand edits the template does not make (a flattened persistent loop, a warp-specialized k loop)
and a few knob changes.

This sweep is what set the template's TMA knob and the seeds that use it. It renders the template
as it is at the commit that quotes it (see RESULTS.md).

    python3 bench/matmul_sweep.py [--out DIR]
"""
import argparse
import itertools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kevolve.hardware.target import load_target  # noqa: E402
from bench.rendered import entry_point  # noqa: E402
from kevolve.specs import resolve_spec  # noqa: E402
from kevolve.synth.offline.families import match_family, render, template_for  # noqa: E402

M, N, K = 8192, 4096, 4096
# Hand edits of the best rendered config, probing what the template does not do (yet):
# (label, changes to the config, (text in the rendered kernel, its replacement) or None).
PROBES = [
    ("flattened tile loop", {}, ("tl.range(pid, per_batch * BATCH, NPROG)",
                                 "tl.range(pid, per_batch * BATCH, NPROG, flatten=True)")),
    ("warp-specialized k loop", {}, ("for k in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):",
                                     "for k in tl.range(0, tl.cdiv(K, BLOCK_K * SPLIT_K), warp_specialize=True):")),
    ("GROUP_M=16", {"GROUP_M": 16}, None),
    ("GROUP_M=4", {"GROUP_M": 4}, None),
    ("2 programs per SM, 128x128 w4 s4", {"BLOCK_N": 128, "num_warps": 4, "num_stages": 4, "programs_per_sm": 2},
     None),
]
TILES = [(128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (128, 256, 64, 8, 4),
         (256, 128, 64, 8, 3), (128, 128, 128, 8, 3), (64, 256, 64, 4, 4), (128, 256, 32, 8, 5)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    args = ap.parse_args()
    target = load_target("h200" if "H200" in torch.cuda.get_device_name() else "h100-sxm")
    spec = resolve_spec("matmul_bias_relu")
    found = match_family(spec)
    template = template_for(found.family)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
    w = (torch.randn(K, N, device="cuda", generator=g) * 0.05).bfloat16()
    b = torch.randn(N, device="cuda", generator=g).bfloat16()
    want = torch.relu(x.float() @ w.float() + b.float())

    def reference(x, w, b):
        return torch.relu(x @ w + b)

    fns, skipped = {}, []
    for (bm, bn, bk, warps, stages), tma, persistent in itertools.product(TILES, (False, True), (False, True)):
        config = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SPLIT_K": 1, "num_warps": warps,
                  "num_stages": stages, "persistent": persistent, "programs_per_sm": 1,
                  "sm_count": target.sm_count, "tma": tma}
        name = f"{bm}x{bn}x{bk} w{warps} s{stages}{' tma' if tma else ''}{' persistent' if persistent else ''}"
        why = template.check(config, found.match, target, spec)
        if why:
            skipped.append(f"{name}: {why}")
            continue
        fns[name] = entry_point(render(spec, found.family, config), spec.entry_point)
    best = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "SPLIT_K": 1, "num_warps": 8,
            "num_stages": 3, "persistent": True, "programs_per_sm": 1, "sm_count": target.sm_count, "tma": True}
    for label, changes, edit in PROBES:
        code = render(spec, found.family, dict(best, **changes))
        if edit is not None:
            assert edit[0] in code, edit[0]
            code = code.replace(edit[0], edit[1])
        fns[f"128x256x64 w8 s3 tma persistent, {label}"] = entry_point(code, spec.entry_point)
    fns["eager"] = reference
    fns["torch.compile default"] = torch.compile(reference)
    fns["torch.compile max-autotune"] = torch.compile(reference, mode="max-autotune-no-cudagraphs")
    wrong = {}
    for name, f in list(fns.items()):
        try:
            err = (f(x, w, b).float() - want).abs().max().item()
        except Exception as exc:  # a config the compiler rejects: reported, not timed
            wrong[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            del fns[name]
            continue
        if err > 0.25:
            wrong[name] = f"max abs error {err:.3g}"
            del fns[name]
    times = {k: [] for k in fns}
    for _ in range(5):
        for name, f in fns.items():
            times[name].append(do_bench(lambda: f(x, w, b), warmup=25, rep=100))
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = 2 * M * N * K
    rows = [{"name": k, "ms": v, "tflops": flops / (v * 1e-3) / 1e12, "spread_ms": [min(times[k]), max(times[k])]}
            for k, v in sorted(med.items(), key=lambda kv: kv[1])]
    result = {"date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "triton": __import__("triton").__version__, "shape": [M, N, K],
              "rows": rows, "wrong_or_failed": wrong, "skipped": skipped}
    lines = [f"# matmul_bias_relu sweep ({M} x {N} x {K}, bf16) on {result['device']}", "",
             f"{result['date']}; torch {result['torch']}, triton {result['triton']}; "
             "command: `python3 bench/matmul_sweep.py`. Medians of five do_bench rounds (L2 flushed).", "",
             "| kernel | ms | TFLOP/s | spread ms |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['ms']:.4f} | {r['tflops']:.0f} | {r['spread_ms'][0]:.4f}-{r['spread_ms'][1]:.4f} |"
              for r in rows]
    if wrong:
        lines += ["", "Failed or wrong: " + "; ".join(f"{k} ({v})" for k, v in wrong.items())]
    if skipped:
        lines += ["", "Not valid on this target: " + "; ".join(skipped)]
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "matmul_sweep.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "matmul_sweep.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
