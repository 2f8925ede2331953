"""Issue 14's bfloat16 lever, layer by layer, on a CPU with native bfloat16 (AVX512_BF16 or AMX).

    python benchmarks/levers_bf16.py --json benchmarks/levers-bf16.json    # about 3 minutes
    python benchmarks/levers_bf16.py --threads 2

Parts:
- `layers`: the reference network's two grouped convolutions (5 members x 50 images), forward
  and backward (the gradients training needs), in float32 and in bfloat16.
- `step`: one training step (5 members x 25 pairs) in float32, under bfloat16 autocast
  everywhere (what TwinNet does with precision="bfloat16"), and under autocast with the first
  convolution kept in float32 (the lever); interleaved rounds, medians.
- `trial`: the whole reference trial the same three ways, interleaved `--repeats` times. A lone
  step in a fresh process pays page faults that a trial does not (levers.py, part `heap`),
  which favours the variant with smaller activations: the trial decides.
On a CPU without native bfloat16 it says so and measures nothing: torch would emulate it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from levers import K, interleaved, median_ms, reference_step, reference_trial, timed  # noqa: E402

from bench import cpu_model  # noqa: E402

import hpo.model  # noqa: E402
from hpo.train import native_bfloat16  # noqa: E402

IMAGES = 50  # a training step's images per member: 25 pairs


def conv_pass(cin: int, cout: int, size: int, dtype: torch.dtype, input_grad: bool) -> Callable[[], object]:
    """Forward and backward of one grouped K-member 3x3 convolution on channels-last tensors."""
    gen = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(IMAGES, K * cin, size, size, generator=gen).to(dtype).contiguous(memory_format=cl)
    w = (0.1 * torch.randn(K * cout, cin, 3, 3, generator=gen)).to(dtype).contiguous(memory_format=cl)
    b = torch.zeros(K * cout, dtype=dtype)
    g = torch.randn(IMAGES, K * cout, size - 2, size - 2, generator=gen).to(dtype).contiguous(memory_format=cl)
    mask = [input_grad, True, True]

    def run() -> object:
        y = F.conv2d(x, w, b, groups=K)
        return y, torch.ops.aten.convolution_backward(g, x, w, [K * cout], [1, 1], [0, 0], [1, 1], False, [0, 0], K, mask)

    return run


def layers_part(repeats: int) -> dict[str, float]:
    out = {}
    for name, cin, cout, size, input_grad in (("conv1", 1, 32, 14, False), ("conv2", 32, 64, 6, True)):
        for dtype in (torch.float32, torch.bfloat16):
            out[f"{name}_{str(dtype)[6:]}_ms"] = median_ms(conv_pass(cin, cout, size, dtype, input_grad), repeats)
        out[f"{name}_bfloat16_speedup"] = out[f"{name}_float32_ms"] / out[f"{name}_bfloat16_ms"]
    return out


@contextlib.contextmanager
def first_layer_in_float32() -> Iterator[None]:
    """The lever: under autocast, TwinNet's first convolution (one input channel per member)
    runs in float32; its output, pooled, reaches the second convolution, which autocast casts."""
    forward = hpo.model.MemberConv2d.forward

    def float32_first(self: hpo.model.MemberConv2d, x: torch.Tensor) -> torch.Tensor:
        if self.conv.in_channels != self.members:  # not the first layer
            return forward(self, x)
        with torch.autocast(x.device.type, enabled=False):
            return forward(self, x.float())

    hpo.model.MemberConv2d.forward = float32_first  # type: ignore[method-assign]
    try:
        yield
    finally:
        hpo.model.MemberConv2d.forward = forward  # type: ignore[method-assign]


# Each variant: bfloat16 autocast or not, and the context it runs in.
VARIANTS = {
    "float32": (False, contextlib.nullcontext),
    "bfloat16_everywhere": (True, contextlib.nullcontext),
    "bfloat16_first_layer_float32": (True, first_layer_in_float32),
}


def three_ways(make: Callable[[bool], Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """make(bfloat16)'s runner for each variant, called once a round under its context."""
    return interleaved({name: (make(bf16), context) for name, (bf16, context) in VARIANTS.items()}, rounds)


def medians(values: dict[str, list[float]], unit: str) -> dict[str, float]:
    """Each variant's median as `<variant>_<unit>`, and the bfloat16 variants' speed-ups over float32."""
    out = {f"{name}_{unit}": statistics.median(v) for name, v in values.items()}
    for name in list(VARIANTS)[1:]:
        out[f"{name}_speedup"] = out[f"float32_{unit}"] / out[f"{name}_{unit}"]
    return out


def step_part(steps: int, rounds: int) -> dict[str, Any]:
    def make(bfloat16: bool) -> Callable[[], float]:
        step = reference_step(25, bfloat16=bfloat16)

        def run() -> float:  # ms per step, after 5 steps of warm-up in this variant's context
            for _ in range(5):
                step()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            return 1e3 * (time.perf_counter() - start) / steps

        return run

    times = three_ways(make, rounds)
    return {**medians(times, "step_ms"), "rounds_ms": times}


def trial_part(repeats: int, epochs: int) -> dict[str, Any]:
    runs = three_ways(lambda bfloat16: timed(reference_trial(epochs, "bfloat16" if bfloat16 else "float32")), repeats)
    times = {name: [t for t, _ in r] for name, r in runs.items()}
    return {**medians(times, "s"), "runs_s": times, "cv_accuracy": {name: [a for _, a in r] for name, r in runs.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parts", default="layers,step,trial")
    ap.add_argument("--repeats", type=int, default=3, help="whole trials per variant (the other parts take many more)")
    ap.add_argument("--quick", action="store_true", help="a few repeats of each part, a 1-epoch trial (the suite's smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                              "quick": args.quick, "native_bfloat16": native_bfloat16()}
    parts = {
        "layers": lambda: layers_part(3 if args.quick else 60),
        "step": lambda: step_part(*((2, 1) if args.quick else (40, 5))),
        "trial": lambda: trial_part(1 if args.quick else args.repeats, 1 if args.quick else 25),
    }
    for name in args.parts.split(",") if result["native_bfloat16"] else []:
        result[name] = parts[name]()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
