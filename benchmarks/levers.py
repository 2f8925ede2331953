"""Issue 14's levers, each measured on its own against today's code, side by side in one run.

    python benchmarks/levers.py                    # every part, 1 thread, 3 repeats (about 6 minutes)
    python benchmarks/levers.py --parts conv2,step --threads 2
    python benchmarks/levers.py --quick            # every part tiny (the suite's smoke test)

Parts:
- `heap`: glibc's allocator as it comes against its mmap and trim thresholds raised (256 MiB
  and 1 GiB, through glibc's MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_: freed memory
  kept in the process), each in fresh processes, alternating `--repeats` times: one training
  step of the reference network (5 members x 25 pairs; its time and page faults), then the
  whole reference trial.
- `conv2`: the second convolution (5 members x 50 images, 32 -> 64 channels, 6x6 -> 4x4) forward
  and backward as oneDNN's grouped convolution (what TwinNet ran before hpo/winograd.py)
  against im2col + `bmm` (patches gathered once, the input gradient scattered back window by
  window) and against Winograd's F(4x4, 3x3) (hpo/winograd.py, what TwinNet runs on the CPU);
  all checked equal first.
- `step`: one training step of the reference network (5 members) at 1, 5 and 25 pairs per
  member: what a step costs that the batch does not pay for (dispatch, oneDNN set-up, Python).
- `compile`: the same step with the network under `torch.compile` (inductor; dropout off in
  both, as the compiled forward takes no generator): the first step's compile time, then
  the step time against eager.
- `profile`: 5 epochs of the reference trial under torch.profiler: each kind of operator's
  share of the operators' time; `profile_batch_norm` the same with batch norm (not in the
  default parts).
- `trial`: the reference trial (bench.REFERENCE through hpo's Objective) as it is (the first
  layer fused, hpo/first_layer.py; Adam as one call of the fused kernel, hpo/adam.py), with
  that layer through PyTorch's convolution, pooling and ReLU as before, with
  `torch.optim.Adam(fused=True)` as before (its per-step bookkeeping), with the second
  convolution as oneDNN's grouped convolution (`direct_conv2`) and by Winograd's F(4x4, 3x3)
  whatever the thread count (`winograd_any_threads`; as it is, on one or two threads), with
  Winograd's convolution followed by PyTorch's pooling and ReLU instead of the pooled pass of
  hpo/winograd_pool.py (`unpooled_conv2`), and with validation in one chunk of 200 pairs per
  member instead of 50; interleaved repeats.
- `trial_batch_norm`: the same trial with batch norm after the first convolution, fused (as
  it is) and unfused.
- `batch_norm_accuracy`: that trial's CV accuracy, fused and unfused, for seeds 0 to 4 (not
  in the default parts; about 2 minutes at 1 thread).
- `winograd_accuracy`, `winograd_accuracy_batch_norm`: the reference trial's CV accuracy
  without and with batch norm, the second convolution by Winograd and direct, seeds 0 to 4
  (not in the default parts; about 2 minutes each at 1 thread).
Medians of `--repeats`; `--epochs` shortens the trial parts' trials (more repeats in the time),
`--variants` picks some of their variants; JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import FULL, REFERENCE, child_json, cpu_model, median_of, reference_spec

from hpo.kernels.dispatch import Kernels, choose
from hpo.kernels.winograd import winograd_conv
from hpo.rng import generator
from hpo.search.objective import Objective
from hpo.spec.registry import configs
from hpo.spec.space import Fixed
from hpo.training.batched import _loss
from hpo.training.data import cv_pairs, resolve_data_dir
from hpo.training.model import TwinNet

K, C_IN, C_OUT = 5, 32, 64
KEPT_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def median_ms(run: Callable[[], Any], repeats: int) -> float:
    """bench.median_of in milliseconds, after one warm-up call (oneDNN picks its kernels)."""
    run()
    return 1e3 * median_of(repeats, run)[0]


def conv2_part(images: int = 50, repeats: int = 40) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(images, K * C_IN, 6, 6, generator=gen).contiguous(memory_format=torch.channels_last)
    w = (0.1 * torch.randn(K * C_OUT, C_IN, 3, 3, generator=gen)).contiguous(memory_format=torch.channels_last)
    b = torch.zeros(K * C_OUT)
    g = torch.randn(images, K * C_OUT, 4, 4, generator=gen).contiguous(memory_format=torch.channels_last)

    def onednn() -> tuple[torch.Tensor, ...]:
        y = F.conv2d(x, w, b, groups=K)
        grads = torch.ops.aten.convolution_backward(
            g, x, w, [K * C_OUT], [1, 1], [0, 0], [1, 1], False, [0, 0], K, [True, True, True]
        )
        return y, *grads

    xs = x.permute(0, 2, 3, 1).reshape(images, 6, 6, K, C_IN)  # a view: channels-last memory
    wm = w.view(K, C_OUT, C_IN, 3, 3).permute(0, 3, 4, 2, 1).reshape(K, 9 * C_IN, C_OUT).contiguous()
    gm = g.permute(0, 2, 3, 1).reshape(images * 16, K, C_OUT).transpose(0, 1)

    def im2col_bmm() -> tuple[torch.Tensor, ...]:
        s = xs.stride()
        patches = xs.as_strided((K, images, 4, 4, 3, 3, C_IN), (s[3], s[0], s[1], s[2], s[1], s[2], s[4]))
        patches = patches.reshape(K, images * 16, 9 * C_IN)
        y = torch.baddbmm(b.view(K, 1, C_OUT), patches, wm)
        grad_w = torch.bmm(patches.transpose(1, 2), gm)
        grad_p = torch.bmm(gm, wm.transpose(1, 2)).view(K, images, 4, 4, 3, 3, C_IN)
        grad_x = torch.zeros(images, 6, 6, K, C_IN)
        for kh in range(3):
            for kw in range(3):
                grad_x[:, kh : kh + 4, kw : kw + 4] += grad_p[:, :, :, :, kh, kw].permute(1, 2, 3, 0, 4)
        return y, grad_x, grad_w, gm.sum(1)

    xw, ww, bw = (t.detach().requires_grad_() for t in (x, w, b))

    def winograd() -> tuple[torch.Tensor, ...]:
        y = winograd_conv(xw, ww, bw, K)
        return y, *torch.autograd.grad(y, (xw, ww, bw), g)

    y, gx, gw, _ = onednn()
    y2, gx2, *_ = im2col_bmm()
    if any((a - b).abs().max() > 1e-4 * a.abs().max() for a, b in zip((y, gx, gw), winograd())):
        raise SystemExit("Winograd's F(4x4, 3x3) does not compute what the grouped convolution computes")
    same = torch.allclose(
        y.permute(0, 2, 3, 1).reshape(images * 16, K, C_OUT).transpose(0, 1), y2, atol=1e-4
    ) and torch.allclose(gx.permute(0, 2, 3, 1).reshape(images, 6, 6, K, C_IN), gx2, atol=1e-4)
    if not same:
        raise SystemExit("im2col + bmm does not compute what the grouped convolution computes")
    out = {
        "onednn_ms": median_ms(onednn, repeats),
        "im2col_bmm_ms": median_ms(im2col_bmm, repeats),
        "winograd_ms": median_ms(winograd, repeats),
    }
    out["im2col_bmm_over_onednn"] = out["im2col_bmm_ms"] / out["onednn_ms"]
    out["onednn_over_winograd"] = out["onednn_ms"] / out["winograd_ms"]
    return out


def reference_step(
    batch: int, dropout: bool = True, compiled: bool = False, bfloat16: bool = False
) -> Callable[[], None]:
    """One training step of the reference network with K members on a fixed random batch.

    Without dropout the network runs in eval mode and takes no generator: what a compiled
    forward accepts, so compiled and eager steps compare like for like. `bfloat16`: the
    forward pass under autocast, as train_members runs it with precision="bfloat16".
    """
    cfg, _ = configs(REFERENCE, 1, 25)
    model = TwinNet(cfg, K).init_([generator(s, "init") for s in range(K)]).train(dropout)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(K, batch, 2, 14, 14, generator=gen)
    y, c = torch.randint(0, 2, (K, batch), generator=gen), torch.randint(0, 10, (K, batch, 2), generator=gen)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            answer, digits = forward(x, [gen] * K) if dropout else forward(x)
        loss = _loss(answer.float(), digits.float(), y, c, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_part(repeats: int = 200) -> dict[str, float]:
    out = {}
    for batch in (1, 5, 25):
        step = reference_step(batch)
        for _ in range(20):
            step()
        out[f"step_ms_at_{batch}_pairs_per_member"] = median_ms(step, repeats)
    return out


def heap_child(repeats: int, epochs: int) -> dict[str, Any]:
    """One process's side of heap_part: the 25-pair step (median ms, page faults per step) and,
    for `epochs` > 0, the reference trial, under whatever MALLOC_ variables the process got."""
    kept = "MALLOC_MMAP_THRESHOLD_" in os.environ
    step = reference_step(25)
    for _ in range(20):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = {"kept": kept, "step_ms": median_ms(step, repeats)}
    out["step_faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (repeats + 1)
    if epochs:
        trial = reference_trial(epochs)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out["trial_s"], _, out["trial_cv_accuracy"] = median_of(1, trial)
        out["trial_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return out


def heap_part(repeats: int = 200, epochs: int = FULL.epochs, rounds: int = 3) -> dict[str, Any]:
    """glibc's allocator as it comes against its thresholds raised, each in fresh processes
    (glibc reads them at start), alternating `rounds` times: medians."""
    runs: dict[str, list[dict[str, Any]]] = {"glibc_default": [], "kept_heap": []}
    for _ in range(rounds):
        for name, extra in (("glibc_default", {}), ("kept_heap", KEPT_HEAP)):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
            job = [__file__, "--heap-child", f"{repeats},{epochs}", "--threads", str(torch.get_num_threads())]
            runs[name].append(child_json(job, env))
    out: dict[str, Any] = {"epochs": epochs, "runs": runs}
    for name, rs in runs.items():
        for key in rs[0]:
            if key != "kept":
                out[f"{name}_{key}"] = statistics.median(r[key] for r in rs)
    out["step_speedup"] = out["glibc_default_step_ms"] / out["kept_heap_step_ms"]
    if epochs:
        out["trial_speedup"] = out["glibc_default_trial_s"] / out["kept_heap_trial_s"]
    return out


def compile_part(repeats: int = 100) -> dict[str, float]:
    out = {}
    for name in ("eager", "compiled"):
        step = reference_step(25, dropout=False, compiled=name == "compiled")
        start = time.perf_counter()
        step()
        out[f"{name}_first_step_s"] = time.perf_counter() - start
        out[f"{name}_step_ms"] = median_ms(step, repeats)
    out["compiled_over_eager"] = out["compiled_step_ms"] / out["eager_step_ms"]
    return out


def lever(name: str, batch_norm: bool, threads: int) -> Kernels | None:
    """The kernels a trial variant trains with (hpo.kernels.dispatch), passed to the objective;
    None: the dispatch's own choice (`as_is`)."""
    chosen = choose(batch_norm, threads=threads)
    variants = {
        "as_is": None,
        "direct_conv2": Kernels(chosen.first, "torch"),  # oneDNN's grouped convolution, as before Winograd
        "winograd_any_threads": choose(batch_norm, threads=1),  # Winograd (and the stem) at any thread count
        "unfused_first_layer": Kernels("torch", chosen.second),  # PyTorch's layers, as before the fused one
        "no_stem": Kernels(chosen.first, chosen.second),  # the two layers one by one, as before stem.py
        # Winograd, then PyTorch's pooling and ReLU, as before winograd_pool.py
        "unpooled_conv2": Kernels(chosen.first, "winograd" if chosen.second == "winograd_pool" else chosen.second),
    }
    return variants[name]


def reference_trial(
    epochs: int,
    precision: str = "float32",
    batch_norm: bool = False,
    seed: int | None = None,
    kernels: Kernels | None = None,
) -> Callable[[], float]:
    """The reference trial through hpo's Objective on the MNIST pairs of HPO_DATA_DIR
    (`batch_norm`: with batch norm, as issue 14's text describes it; `seed`: the spec's;
    `kernels`: the first two layers' kernels, default the dispatch's)."""
    spec = reference_spec(replace(FULL, epochs=epochs))
    spec = replace(spec, space={**spec.space, "batch_norm": Fixed(batch_norm)})
    spec = spec if seed is None else replace(spec, seed=seed)
    pairs = cv_pairs(resolve_data_dir(None), spec.train.train_pairs, spec.seed)
    objective = Objective(spec, pairs, torch.device("cpu"), precision, kernels)

    def run() -> float:
        fixed = optuna.trial.FixedTrial({**REFERENCE, "batch_norm": batch_norm})
        value = objective(fixed)
        trained_with.append(fixed.user_attrs["kernels"])
        return value

    return run


trained_with: list[str] = []  # the kernels each reference trial recorded, last last


def interleaved(runners: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """What each runner returns, called once a round, the variants taking turns so that all of
    them see the same load."""
    results: dict[str, list[Any]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            results[name].append(run())
    return results


def timed(trial: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """A trial's seconds and CV accuracy."""

    def run() -> tuple[float, float]:
        _, [seconds], accuracy = median_of(1, trial)
        return seconds, accuracy

    return run


TRIAL_VARIANTS = (
    "direct_conv2",
    "winograd_any_threads",
    "unfused_first_layer",
    "no_stem",
    "unpooled_conv2",
)
BATCH_NORM_VARIANTS = (
    "direct_conv2",
    "winograd_any_threads",
    "unfused_first_layer",
)  # the rest are batch norm's path already


def trial_part(
    repeats: int, epochs: int = FULL.epochs, batch_norm: bool = False, variants: tuple[str, ...] | None = None
) -> dict[str, Any]:
    names = ("as_is", *(variants or (BATCH_NORM_VARIANTS if batch_norm else TRIAL_VARIANTS)))
    threads = torch.get_num_threads()
    trials = {
        n: timed(reference_trial(epochs, batch_norm=batch_norm, kernels=lever(n, batch_norm, threads))) for n in names
    }
    runs = interleaved(trials, repeats)
    times = {n: [t for t, _ in r] for n, r in runs.items()}
    out: dict[str, Any] = {f"{n}_s": statistics.median(t) for n, t in times.items()}
    out.update({f"{n}_runs_s": t for n, t in times.items()}, cv_accuracy={n: r[-1][1] for n, r in runs.items()})
    out.update({f"{n}_over_as_is": out[f"{n}_s"] / out["as_is_s"] for n in names[1:]})
    out["kernels"] = dict(zip(names, trained_with[-len(names) :]))  # what each variant's last trial recorded
    return out


def accuracy_part(seeds: int, epochs: int, batch_norm: bool, variants: tuple[str, str]) -> dict[str, Any]:
    """CV accuracy of the reference trial (with batch norm or without), seeds 0..seeds-1, with
    two variants' kernels (`lever`)."""
    accuracies: dict[str, list[float]] = {name: [] for name in variants}
    threads = torch.get_num_threads()
    for seed in range(seeds):
        for name, runs in accuracies.items():
            kernels = lever(name, batch_norm, threads)
            runs.append(reference_trial(epochs, batch_norm=batch_norm, seed=seed, kernels=kernels)())
    return {"cv_accuracy": accuracies, "mean": {n: statistics.mean(a) for n, a in accuracies.items()}}


KINDS = {  # operator name fragments -> the kind reported
    "_stem": "first two layers but their products (stem.py: first layer, Winograd's transforms, pooling; both passes)",
    "firstlayer": "first layer (fused, both passes)",
    "winogradconv": "second convolution's transforms (Winograd, both passes)",
    "convolution_backward": "convolution backward",
    "mkldnn_convolution": "convolution forward",
    "max_pool2d": "max-pooling",
    "batch_norm": "batch norm (both passes)",
    "bmm": "batched products",
    "adam": "Adam",
    "fill_": "zero-fills",
}


def profile_part(epochs: int = 5, batch_norm: bool = False) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    trial = reference_trial(epochs, batch_norm=batch_norm)
    trial()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trial()
    wall = time.perf_counter() - start
    shares: dict[str, float] = {}
    total = 0.0
    for event in prof.key_averages():
        total += event.self_cpu_time_total
        kind = next((k for frag, k in KINDS.items() if frag in event.key.lower()), "other operators")
        shares[kind] = shares.get(kind, 0.0) + event.self_cpu_time_total
    return {
        "epochs": epochs,
        "wall_s_profiled": wall,
        "operators_s": total / 1e6,
        "share": {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="heap,conv2,step,profile,trial,trial_batch_norm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--repeats", type=int, default=3, help="whole trials per lever (the micro-benchmarks take many more)"
    )
    ap.add_argument("--quick", action="store_true", help="a few repeats of each part and a 1-epoch trial")
    ap.add_argument(
        "--epochs",
        type=int,
        default=FULL.epochs,
        help="epochs of the trial parts' trials (shorter: more repeats in the time)",
    )
    ap.add_argument(
        "--variants",
        default=None,
        help=f"the trial parts' variants, comma-separated (default all: {','.join(TRIAL_VARIANTS)})",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--heap-child", default=None, help=argparse.SUPPRESS)  # heap_part's child: "repeats,epochs"
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.heap_child is not None:
        repeats, epochs = (int(n) for n in args.heap_child.split(","))
        print(json.dumps(heap_child(repeats, epochs)))
        return {}
    variants = None if args.variants is None else tuple(args.variants.split(","))
    if variants and set(variants) - set(TRIAL_VARIANTS):
        ap.error(
            f"--variants: unknown {sorted(set(variants) - set(TRIAL_VARIANTS))}; known: {', '.join(TRIAL_VARIANTS)}"
        )
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "torch": torch.__version__,
        "quick": args.quick,
        "epochs": args.epochs,
    }
    micro = 3 if args.quick else None
    seeds_epochs = (1, 1) if args.quick else (5, FULL.epochs)
    parts = {
        "conv2": lambda: conv2_part(repeats=micro or 40),
        "step": lambda: step_part(repeats=micro or 200),
        "heap": lambda: heap_part(micro or 200, 1 if args.quick else FULL.epochs, 1 if args.quick else args.repeats),
        "profile": lambda: profile_part(1 if args.quick else 5),
        "profile_batch_norm": lambda: profile_part(1 if args.quick else 5, batch_norm=True),
        "compile": lambda: compile_part(repeats=micro or 100),
        "trial": lambda: trial_part(
            1 if args.quick else args.repeats, 1 if args.quick else args.epochs, variants=variants
        ),
        "batch_norm_accuracy": lambda: accuracy_part(*seeds_epochs, True, ("as_is", "unfused_first_layer")),
        "winograd_accuracy": lambda: accuracy_part(*seeds_epochs, False, ("winograd_any_threads", "direct_conv2")),
        "winograd_accuracy_batch_norm": lambda: accuracy_part(
            *seeds_epochs, True, ("winograd_any_threads", "direct_conv2")
        ),
        "trial_batch_norm": lambda: trial_part(
            1 if args.quick else args.repeats, 1 if args.quick else args.epochs, batch_norm=True, variants=variants
        ),
    }
    for name in args.parts.split(","):
        result[name] = parts[name]()
        print(name, json.dumps(result[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
