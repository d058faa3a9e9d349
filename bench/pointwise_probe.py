"""Two pointwise specs on the GPU, kernel against kernel: the pointwise template's kernel as the
offline synthesizer renders it, the same with hand edits the template does not make, and
torch.compile default's kernel. The edits: log1p by libdevice instead of log(u) * x / (u - 1)
(clamp_log1p), and no mask where the size is a multiple of the block, as inductor compiles a
static size (both specs). Kernel times from the profiler (device us per call, medians of 50
calls), so the launch paths do not count; each variant checked against float64 first.
Both edits have since become the template's own: the `libdevice` config entry and the
`unmasked` knob; this probe renders without them and applies them by hand, as it first did.

    python3 bench/pointwise_probe.py
"""
import os
import sys

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.kernel_probe import call_us  # noqa: E402
from bench.rendered import entry_point  # noqa: E402
from kevolve.specs import resolve_spec  # noqa: E402
from kevolve.synth.offline.families import render  # noqa: E402

LIBDEVICE_LOG1P = ("@triton.jit\ndef _log1p(x):\n    return libdevice.log1p(x)\n\n\n", "from triton.language.extra import libdevice")
NO_MASK = ("mask = offs < N", "mask = tl.full([BLOCK], 1, tl.int1)")


def with_libdevice_log1p(code: str) -> str:
    start = code.index("@triton.jit\ndef _log1p(x):")
    end = code.index("@triton.jit", start + 1)
    helper, imp = LIBDEVICE_LOG1P
    code = code[:start] + helper + code[end:]
    return code.replace("import triton.language as tl", "import triton.language as tl\n" + imp)


def probe(name, reference, xs, configs, edits):
    spec = resolve_spec(name)
    want = reference(*[x.double() for x in xs])
    fns = {}
    for config in configs:
        code = render(spec, "pointwise", dict(config, num_stages=1, persistent=False, programs_per_sm=4,
                                              evict="none", sm_count=132))
        label = f"B{config['BLOCK']} w{config['num_warps']}"
        fns[f"{label} as rendered"] = entry_point(code, spec.entry_point)
        for edit_name, edit in edits:
            fns[f"{label} {edit_name}"] = entry_point(edit(code), spec.entry_point)
    fns["torch.compile default"] = torch.compile(reference)
    print(f"\n## {name} on {torch.cuda.get_device_name()}\n\n| kernel | us | max abs error |\n|---|---|---|")
    rows = []
    for label, fn in fns.items():
        err = (fn(*xs).double() - want).abs().max().item()
        rows.append((call_us(lambda: fn(*xs)), label, err))
    for us, label, err in sorted(rows):
        print(f"| {label} | {us:.1f} | {err:.2g} |")


def main() -> None:
    import time

    import triton

    print(f"# Pointwise kernels against inductor's: probe\n\n{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; command: "
          "`python3 bench/pointwise_probe.py` (stdout). Profiler kernel times, device us per call, medians of 50 calls.")
    g = torch.Generator(device="cuda").manual_seed(0)
    no_mask = ("without mask", lambda code: code.replace(*NO_MASK))
    x = torch.randn(1 << 24, device="cuda", generator=g) * 5 + 1
    probe("clamp_log1p", lambda t: torch.log1p(torch.clamp(t, min=0)), [x],
          [{"BLOCK": 1024, "num_warps": 4}, {"BLOCK": 2048, "num_warps": 8}],
          [("libdevice log1p", with_libdevice_log1p), no_mask,
           ("libdevice log1p, without mask", lambda code: with_libdevice_log1p(code).replace(*NO_MASK))])
    m, n = 16384, 4096
    xs = [(torch.randn(m, n, device="cuda", generator=g) * 2).bfloat16(),
          torch.randn(n, device="cuda", generator=g).bfloat16(), torch.randn(m, n, device="cuda", generator=g).bfloat16()]
    probe("bias_gelu_residual", lambda x, b, r: F.gelu(x + b) + r, xs,
          [{"BLOCK": 2048, "num_warps": 4}, {"BLOCK": 1024, "num_warps": 2}], [no_mask])


if __name__ == "__main__":
    main()
