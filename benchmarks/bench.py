"""Speed and memory of `hpo` against the loop a user would write, measured side by side in one run.

    python benchmarks/bench.py                      # everything at full size (about an hour here)
    python benchmarks/bench.py --quick              # every part, tiny, in about a minute (CI smoke test)
    python benchmarks/bench.py --parts peak,trial,large_batch --repeats 5 --json out.json

Parts (issues 6 and 14): `peak` (the CPU's own GEMM peak: torch.mm of 2048x2048 in float32 and,
where the CPU has it natively, bfloat16), `trial` (our objective, in float32 and bfloat16, vs a
plain nn.Sequential twin network trained one fold after another with a DataLoader, the trial's
FLOP count and its fraction of the float32 peak) and `large_batch` (one net at large batch:
the throughput a single big batch gets, not a ceiling), each at every `--threads` count, `study`
(an N-trial study with and without pruning),
`workers` (1 and 2 one-thread workers and 1 two-thread worker on PostgreSQL, and their peak RSS),
`gpu` (the trial on CUDA, when torch sees one). A Markdown table goes to stdout, JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from support import fresh_database
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpo.rng import generator
from hpo.search.objective import Objective
from hpo.spec.registry import TwinConfig, configs
from hpo.spec.space import Fixed
from hpo.spec.study_spec import StudySpec, load_spec
from hpo.training.cv import study_folds, trial_seeds
from hpo.training.data import Pairs, cv_pairs, resolve_data_dir
from hpo.training.model import TwinNet, compare_digits
from hpo.training.precision import native_bfloat16

DEFAULT_SPEC = ROOT / "studies" / "twin.toml"  # the built-in default spec
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# The reference configuration: the default spec's network at its widest convolutions
# (32/64 channels, hidden 128, the MLP head), every parameter fixed at TwinConfig's and
# TrainConfig's defaults (weight decay at the space's floor, no shift augmentation).
REFERENCE = {
    "weight_sharing": True,
    "aux_weight": 1.0,
    "dropout": 0.25,
    "batch_norm": False,
    "lr": 1e-3,
    "beta1": 0.9,
    "weight_decay": 1e-6,
    "head": "mlp",
    "head_input": "logits",
    "shift": 0,
    "schedule": "constant",
    "conv1_channels": 32,
    "conv2_channels": 64,
    "hidden": 128,
}
# The default study's most common trial: of the 90 complete trials of a 200-trial run (issue 23),
# 70 were 32/64-channel networks with batch norm and the compare head. The rest as REFERENCE.
COMMON = {**REFERENCE, "batch_norm": True, "head": "compare"}
REFERENCES = {"plain": REFERENCE, "common": COMMON}  # --references: the trial part runs each


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: full size for the README, tiny for --quick."""

    pairs: int
    folds: int
    epochs: int
    large_batches: tuple[int, ...]
    large_batch_steps: int
    study_trials: int
    study_epochs: int
    worker_trials: int
    worker_epochs: int


FULL = Sizes(1000, 5, 25, (250, 500, 1000), 8, 200, 25, 6, 5)
QUICK = Sizes(200, 2, 1, (50,), 2, 2, 1, 1, 1)


def reference_spec(sizes: Sizes, params: dict[str, Any] = REFERENCE) -> StudySpec:
    """The default spec with a reference (`params`) fixed for every parameter, the spec's own
    fixed values (its shifts, its schedule) included: the loop it is compared with has neither."""
    spec = load_spec(DEFAULT_SPEC).with_overrides(folds=sizes.folds, epochs=sizes.epochs)
    space = {name: Fixed(value) for name, value in params.items()}
    return replace(spec, space=space, train=replace(spec.train, train_pairs=sizes.pairs))


def median_of(repeats: int, run: Callable[[], Any]) -> tuple[float, list[float], Any]:
    """Median wall seconds of `repeats` calls, every time, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


# --- 0. the machine's own GEMM peak ----------------------------------------------------------


def gemm_peak(dtype: torch.dtype, repeats: int, n: int = 2048) -> float:
    """GFLOP/s of torch.mm on n x n matrices at the current thread count: the fastest of
    10 x `repeats` calls. A peak is what the cores can do; noise only ever slows a call, and
    a median of a few 0.1-second calls once put the 2-thread peak below the 1-thread one."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up
    _, times, _ = median_of(10 * max(repeats, 1), lambda: torch.mm(a, b))
    return 2 * n**3 / min(times) / 1e9


def bench_peak(repeats: int) -> dict[str, Any]:
    out = {"float32_gflops": gemm_peak(torch.float32, repeats), "bfloat16_native": native_bfloat16()}
    if out["bfloat16_native"]:
        out["bfloat16_gflops"] = gemm_peak(torch.bfloat16, repeats)
    return out


def forward_flops(cfg: TwinConfig) -> tuple[int, int]:
    """Multiply-add FLOPs (2 per MAC) of one pair's forward pass, and of the first convolution
    alone (whose input gradient training never computes), from the network's shapes."""
    c1, c2, hidden = cfg.conv1_channels, cfg.conv2_channels, cfg.hidden
    conv1 = 2 * 12 * 12 * c1 * 9  # 14x14 -> 12x12, 3x3 kernel, one input channel
    conv2 = 2 * 4 * 4 * c2 * c1 * 9  # 6x6 -> 4x4
    per_image = conv1 + conv2 + 2 * (4 * c2) * hidden + 2 * hidden * 10
    encoders = 2 * per_image  # two images per pair
    head = 2 * 20 * cfg.head_hidden + 2 * cfg.head_hidden * 2 if cfg.head == "mlp" else 0
    return encoders + head, 2 * conv1


def trial_flops(cfg: TwinConfig, folds: int, train_pairs: int, val_pairs: int, epochs: int) -> dict[str, float]:
    """A trial's FLOPs: training is forward + backward (input and weight gradients, twice the
    forward, less the first convolution's input gradient); validation after every epoch is a forward."""
    forward, conv1 = forward_flops(cfg)
    train_step = 3 * forward - conv1
    total = epochs * (folds * train_pairs * train_step + folds * val_pairs * forward)
    return {"train_mflop_per_pair": train_step / 1e6, "val_mflop_per_pair": forward / 1e6, "trial_gflop": total / 1e9}


def reference_flops(spec: StudySpec, folds: Any, params: dict[str, Any] = REFERENCE) -> dict[str, float]:
    """trial_flops of a reference configuration on `folds` (study_folds of the spec's pairs)."""
    return trial_flops(
        configs(params, 1, 25)[0], folds.k, folds.train_index.shape[1], folds.val_index.shape[1], spec.train.epochs
    )


# --- 1. trial speed ---------------------------------------------------------------------------


def user_net(cfg: TwinConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """A reference network as a user writes it: a plain nn.Sequential encoder shared by both
    images (conv-[batch norm]-pool-relu twice, two linear layers with batch norm between them
    where asked, dropout) and an MLP head on both digits' logits (an empty one for the compare
    head, whose answer has no parameters: `user_answer`)."""
    c1, c2 = cfg.conv1_channels, cfg.conv2_channels

    def norm(layer: type[nn.Module], channels: int) -> list[nn.Module]:
        return [layer(channels)] if cfg.batch_norm else []

    encoder = nn.Sequential(
        nn.Conv2d(1, c1, 3),
        *norm(nn.BatchNorm2d, c1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3),
        *norm(nn.BatchNorm2d, c2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * c2, cfg.hidden),
        *norm(nn.BatchNorm1d, cfg.hidden),
        nn.ReLU(),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.hidden, 10),
    )
    if cfg.head == "compare":
        return encoder, nn.Sequential()
    head = nn.Sequential(nn.Linear(20, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, 2))
    return encoder, head


def user_answer(cfg: TwinConfig, head: nn.Module, digits: torch.Tensor) -> torch.Tensor:
    """The answer's logits from both digits' (N x 2 x 10): the MLP head, or the compare head's
    formula (the same function TwinNet's compare head computes, as a user would copy it)."""
    if cfg.head == "compare":
        return compare_digits(digits.unsqueeze(0))[0]
    return head(digits.flatten(1))


def user_loop(spec: StudySpec, pairs: Pairs, objective: Objective, params: dict[str, Any]) -> float:
    """What a user writes: one fold after another, a DataLoader over the fold's pairs, a fresh
    nn.Sequential twin network and a plain Adam each, scored once after the last epoch.

    Same folds, settings and loss as our trial; seeded (torch.manual_seed), so it is repeatable.
    Returns the mean CV accuracy.
    """
    cfg, train = configs(params, spec.train.epochs, spec.train.batch_size)
    folds, accuracies = objective.folds, []
    for fold, seed in enumerate(trial_seeds(spec.seed, 0, folds.k)):
        rows, val = folds.train_index[fold], folds.val_index[fold]
        torch.manual_seed(seed)
        encoder, head = user_net(cfg)
        model = nn.ModuleList([encoder, head])
        opt = torch.optim.Adam(
            model.parameters(), lr=train.lr, betas=(train.beta1, 0.999), weight_decay=train.weight_decay
        )
        data = TensorDataset(pairs.inputs[rows], pairs.targets[rows], pairs.classes[rows])
        loader = DataLoader(data, batch_size=train.batch_size, shuffle=True)

        def forward(
            x: torch.Tensor, encoder: nn.Module = encoder, head: nn.Module = head
        ) -> tuple[torch.Tensor, torch.Tensor]:
            digits = encoder(x.reshape(-1, 1, 14, 14)).view(-1, 2, 10)  # both images in one batch
            return user_answer(cfg, head, digits), digits

        model.train()
        for _ in range(train.epochs):
            for x, y, c in loader:
                answer, digits = forward(x)
                loss = user_loss(answer, digits, y, c, train.aux_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            answer, _ = forward(pairs.inputs[val])
        accuracies.append((answer.argmax(-1) == pairs.targets[val]).float().mean().item())
    return statistics.fmean(accuracies)


def child_json(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """`python ARGV` as a fresh process; the JSON line it printed last (a measurement taken
    where nothing of this process's state can reach it)."""
    done = subprocess.run([sys.executable, *argv], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def user_loop_process(sizes: Sizes, data_dir: Path, repeat: int, reference: str = "plain") -> tuple[float, float]:
    """user_loop in a fresh process, as a user's script runs: nothing our trials did before it
    (oneDNN's kernel cache, the allocator's state) carries over.

    Returns the loop's own seconds (imports and data loading excluded) and its CV accuracy.
    """
    job = json.dumps(
        {
            "sizes": sizes.__dict__,
            "data_dir": str(data_dir),
            "repeat": repeat,
            "threads": torch.get_num_threads(),
            "reference": reference,
        }
    )
    answer = child_json([__file__, "--user-loop-child", job])
    return answer["seconds"], answer["accuracy"]


def user_loop_child(job: dict[str, Any]) -> None:
    """The child's side of user_loop_process: one user loop, its time and accuracy as JSON."""
    torch.set_num_threads(job["threads"])
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["sizes"].items()})
    params = REFERENCES[job.get("reference", "plain")]
    base = reference_spec(sizes, params)
    spec = replace(base, seed=base.seed + job["repeat"])
    pairs = cv_pairs(Path(job["data_dir"]), sizes.pairs, base.seed, download=False)
    objective = Objective(spec, pairs, torch.device("cpu"))
    seconds, _, accuracy = median_of(1, lambda: user_loop(spec, pairs, objective, params))
    print(json.dumps({"seconds": seconds, "accuracy": accuracy}))


def user_loss(answer: torch.Tensor, digits: torch.Tensor, y: torch.Tensor, c: torch.Tensor, aux: float) -> torch.Tensor:
    """The twin task's loss as a user writes it: the answer plus both digits' auxiliary losses."""
    return F.cross_entropy(answer, y) + aux * (
        F.cross_entropy(digits[:, 0], c[:, 0]) + F.cross_entropy(digits[:, 1], c[:, 1])
    )


def bench_trial(
    sizes: Sizes, data_dir: Path, pairs: Pairs, repeats: int, device: str = "cpu", reference: str = "plain"
) -> dict[str, Any]:
    """Our objective (float32, and bfloat16 where native) on a reference trial (REFERENCES)
    against the user's loop, interleaved so all see the same load.

    Repeat r uses seed spec.seed + r (its own folds, initialisations and shuffles) for all, so
    the accuracies compared are means over seeds: one seed's CV accuracy moves by about half a
    point with nothing but the shuffle order changed, which would swamp any difference in method.
    """
    params = REFERENCES[reference]
    spec = reference_spec(sizes, params)
    runs = [replace(spec, seed=spec.seed + r) for r in range(repeats)]
    variants = ["float32"] + (["bfloat16"] if device == "cpu" and native_bfloat16() else [])
    times: dict[str, list[float]] = {v: [] for v in [*variants, "user"]}
    accs: dict[str, list[float]] = {v: [] for v in times}
    trained_in: dict[str, set[str]] = {v: set() for v in variants}  # what each trial recorded
    kernels: dict[str, set[str]] = {v: set() for v in variants}
    for s in runs:
        for v in variants:
            objective, fixed = Objective(s, pairs, torch.device(device), v), optuna.trial.FixedTrial(params)
            _, [t], acc = median_of(1, lambda objective=objective, fixed=fixed: objective(fixed))
            times[v].append(t)
            accs[v].append(acc)
            trained_in[v].add(fixed.user_attrs["precision"])
            kernels[v].add(fixed.user_attrs["kernels"])
        if device == "cpu":  # the user's loop runs on the CPU only, in a process of its own
            t, acc = user_loop_process(sizes, data_dir, s.seed - spec.seed, reference)
            times["user"].append(t)
            accs["user"].append(acc)
    out: dict[str, Any] = {
        "device": device,
        "reference": reference,
        "trained_in": {v: sorted(p) for v, p in trained_in.items()},
        "kernels": {v: sorted(k) for v, k in kernels.items()},
    }
    folds = study_folds(pairs, spec.train.folds, spec.seed)
    flops = reference_flops(spec, folds, params)
    train_pairs = folds.train_index.numel() * spec.train.epochs
    for v in times:
        if not times[v]:
            continue
        key = {"float32": "ours", "user": "user_loop"}.get(v, f"ours_{v}")
        out[f"{key}_s"] = statistics.median(times[v])
        out[f"{key}_runs_s"] = times[v]
        out[f"{key}_cv_accuracy"] = statistics.fmean(accs[v])
        out[f"{key}_cv_accuracies"] = accs[v]
        out[f"{key}_gflops"] = flops["trial_gflop"] / out[f"{key}_s"]
        out[f"{key}_pairs_per_s"] = train_pairs / out[f"{key}_s"]
    out["flops"] = flops
    if device == "cpu":
        out["speedup"] = out["user_loop_s"] / out["ours_s"]
        out["accuracy_gap_points"] = 100 * abs(out["ours_cv_accuracy"] - out["user_loop_cv_accuracy"])
        if "ours_bfloat16_s" in out:
            out["speedup_bfloat16"] = out["user_loop_s"] / out["ours_bfloat16_s"]
    return out


# --- 2. one net at large batch (a reference throughput, not a ceiling) -----------------------


def large_batch_throughput(pairs: Pairs, batch: int, steps: int) -> float:
    """Pairs per second of forward + backward + Adam step of one reference TwinNet at `batch`."""
    cfg = configs(REFERENCE, 1, 25)[0]
    model = TwinNet(cfg).init_([generator(0, "init")]).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    gen = generator(0, "large-batch")
    idx = torch.randint(0, len(pairs), (1, batch), generator=gen)
    x, y, c = pairs.inputs[idx], pairs.targets[idx], pairs.classes[idx]

    def step() -> None:
        answer, digits = model(x, [gen])
        loss = user_loss(answer[0], digits[0], y[0], c[0], 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: oneDNN picks and caches its kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def bench_large_batch(pairs: Pairs, sizes: Sizes, repeats: int) -> dict[str, Any]:
    by_batch = {}
    for batch in sizes.large_batches:
        runs = [large_batch_throughput(pairs, batch, sizes.large_batch_steps) for _ in range(repeats)]
        by_batch[batch] = statistics.median(runs)
    best = max(by_batch, key=by_batch.__getitem__)
    return {"pairs_per_s_by_batch": by_batch, "best_batch": best, "pairs_per_s": by_batch[best]}


# --- 3. study speed (and 4./5. workers), through the real command line ------------------------


def hpo_optimize(
    args: list[str], threads: int | None, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    env.pop("HPO_THREADS", None)
    if threads:
        env["HPO_THREADS"] = str(threads)
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "optimize", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"hpo optimize failed ({proc.returncode}): {stderr.decode()[-2000:]}")


def study_stats(url: str, name: str) -> dict[str, Any]:
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.datetime_complete is not None]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in done if t.state == optuna.trial.TrialState.PRUNED]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {
        "finished": len(done),
        "complete": len(complete),
        "pruned": len(pruned),
        "pruned_share": len(pruned) / len(done),
        "best_cv_accuracy": study.best_value if complete else None,
        "trials_span_s": span,
        "trials_per_min": 60 * len(done) / span,
    }


def bench_study(
    data_dir: Path, sizes: Sizes, trials: int, threads: int | None, pruners: list[str], keep: Path | None
) -> dict[str, Any]:
    """`hpo optimize --trials N` on a fresh SQLite store, once per pruner; wall time of the command."""
    out: dict[str, Any] = {"trials": trials, "epochs": sizes.study_epochs, "threads": threads or "torch default"}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{keep or Path(tmp) / 'bench.db'}"
        for pruner in pruners:
            name = f"bench-{pruner}"
            args = [
                "--trials",
                str(trials),
                "--storage",
                url,
                "--study",
                name,
                "--pruner",
                pruner,
                "--epochs",
                str(sizes.study_epochs),
                "--folds",
                str(sizes.folds),
                "--data-dir",
                str(data_dir),
            ]
            args += _pairs_args(sizes, tmp)
            start = time.perf_counter()
            wait_all([hpo_optimize(args, threads)])
            out[pruner] = {"wall_s": time.perf_counter() - start, **study_stats(url, name)}
    return out


def _pairs_args(sizes: Sizes, tmp: str) -> list[str]:
    """The default spec, or (quick) a copy of it with fewer training pairs."""
    if sizes.pairs == FULL.pairs:
        return []
    text = DEFAULT_SPEC.read_text().replace("train_pairs = 1000", f"train_pairs = {sizes.pairs}")
    path = Path(tmp) / f"spec-{sizes.pairs}.toml"
    path.write_text(text)
    return ["--spec", str(path)]


def fixed_spec(tmp: str, sizes: Sizes) -> Path:
    """The default spec with every parameter fixed at the reference: every trial costs the same."""
    space = "\n".join(f"{k} = {json.dumps(v)}" for k, v in REFERENCE.items())
    text = (
        f'[study]\nname = "bench-workers"\ndirection = "maximize"\nseed = 0\nsampler = "random"\npruner = "none"\n'
        f"[train]\nfolds = {sizes.folds}\nepochs = {sizes.worker_epochs}\nbatch_size = 25\ntrain_pairs = "
        f"{sizes.pairs}\n"
        f"[space]\n{space}\n"
    )
    path = Path(tmp) / "fixed.toml"
    path.write_text(text)
    return path


def bench_workers(data_dir: Path, sizes: Sizes, postgres: str) -> dict[str, Any]:
    """Trials per minute (from the stored trial times) of 1 and 2 one-thread workers, 1 two-thread worker."""
    out: dict[str, Any] = {"trial_epochs": sizes.worker_epochs, "trials_per_worker": sizes.worker_trials}
    with fresh_database(postgres) as url, tempfile.TemporaryDirectory() as tmp:
        spec = fixed_spec(tmp, sizes)
        for label, workers, threads in (
            ("1 worker x 1 thread", 1, 1),
            ("2 workers x 1 thread", 2, 1),
            ("1 worker x 2 threads", 1, 2),
        ):
            name = f"bench-{workers}w{threads}t"
            args = [
                "--trials",
                str(workers * sizes.worker_trials),
                "--spec",
                str(spec),
                "--study",
                name,
                "--storage",
                url,
                "--data-dir",
                str(data_dir),
            ]
            # The first creates the study; the second joins it.
            first = hpo_optimize(args, threads)
            procs = [first]
            if workers == 2:
                time.sleep(0.5)
                procs.append(hpo_optimize(args, threads))
            wait_all(procs)
            out[label] = study_stats(url, name)
    # The largest peak of any `hpo optimize` process this run started (study part included).
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    one, two = out["1 worker x 1 thread"]["trials_per_min"], out["2 workers x 1 thread"]["trials_per_min"]
    out["two_workers_speedup"] = two / one
    out["two_threads_speedup"] = out["1 worker x 2 threads"]["trials_per_min"] / one
    return out


# --- report -----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _at(threads: str) -> str:
    return f"{threads} thread{'s' if threads != '1' else ''}"


def markdown(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    for threads, pk in res.get("peak", {}).items():
        bf = f", bfloat16 {pk['bfloat16_gflops']:.0f}" if "bfloat16_gflops" in pk else ", bfloat16 not native"
        rows.append(
            (f"GEMM peak, {_at(threads)}: torch.mm 2048x2048 (GFLOP/s)", f"float32 {pk['float32_gflops']:.0f}{bf}", "")
        )
    trials = [(threads, t, "") for threads, t in res.get("trial", {}).items()]
    trials += [
        (threads, t, " (common: batch norm, compare head)") for threads, t in res.get("trial_common", {}).items()
    ]
    for threads, t, which in trials:
        at = _at(threads) + which
        f = t["flops"]
        rows.append(
            (
                f"trial FLOPs (from the shapes): {f['train_mflop_per_pair']:.2f} MFLOP per training pair step, "
                f"{f['val_mflop_per_pair']:.2f} per validation pair",
                f"{f['trial_gflop']:.0f} GFLOP",
                "",
            )
        )
        ours = f"{t['ours_s']:.1f}"
        if "ours_bfloat16_s" in t:
            ours += f" (bfloat16 {t['ours_bfloat16_s']:.1f})"
        rows.append(
            (
                f"trial, {at}: our objective / plain nn.Sequential DataLoader loop (s)",
                f"{ours} / {_fmt(t['user_loop_s'], '.1f')}",
                "",
            )
        )
        bf = f" (bfloat16 {t['speedup_bfloat16']:.2f}x)" if "speedup_bfloat16" in t else ""
        rows.append((f"trial, {at}: speed-up", _fmt(t["speedup"], ".2f") + "x" + bf, ">= 3.5x"))
        pk = res.get("peak", {}).get(threads)
        if pk:
            frac = f"{t['ours_gflops']:.1f} GFLOP/s = {t['ours_gflops'] / pk['float32_gflops']:.0%}"
            if "ours_bfloat16_gflops" in t:
                frac += f" (bfloat16 {t['ours_bfloat16_gflops'] / pk['float32_gflops']:.0%})"
            rows.append((f"trial, {at}: fraction of the float32 GEMM peak", frac, ">= 40%"))
        accs = f"{t['ours_cv_accuracy']:.4f} / {t['user_loop_cv_accuracy']:.4f}"
        if "ours_bfloat16_cv_accuracy" in t:
            accs += f" (bfloat16 {t['ours_bfloat16_cv_accuracy']:.4f})"
        rows.append((f"trial, {at}: CV accuracy ours / loop (mean over the repeats' seeds)", accs, ""))
    for threads, c in res.get("large_batch", {}).items():
        at = _at(threads)
        rows.append(
            (f"one net at large batch, {at}: batch {c['best_batch']} (pairs/s)", _fmt(c["pairs_per_s"], ".0f"), "")
        )
        if "trial" in res and threads in res["trial"]:
            rows.append(
                (
                    f"our trial's training throughput / one net at large batch, {at}",
                    f"{res['trial'][threads]['ours_pairs_per_s']:.0f} pairs/s = {c['ours_share']:.0%}",
                    "",
                )
            )
    if "study" in res:
        s = res["study"]
        for pruner in ("median", "none"):
            if pruner in s:
                p = s[pruner]
                rows.append(
                    (
                        f"study: {s['trials']} trials, pruner {pruner}",
                        f"{p['wall_s'] / 60:.1f} min, {p['pruned']} pruned, best {_fmt(p['best_cv_accuracy'], '.4f')}",
                        "<= 20 min (200 trials, median)" if pruner == "median" else "",
                    )
                )
    if "workers" in res:
        w = res["workers"]
        for label in ("1 worker x 1 thread", "2 workers x 1 thread", "1 worker x 2 threads"):
            rows.append((f"workers: {label} (trials/min)", f"{w[label]['trials_per_min']:.2f}", ""))
        rows.append(("workers: 2 x 1 thread vs 1 x 1 thread", f"{w['two_workers_speedup']:.2f}x", ">= 1.6x"))
        rows.append(("workers: peak RSS of a worker (MiB)", f"{w['peak_rss_mib']:.0f}", "<= 1536"))
    g = res.get("gpu", {}).get("plain")
    rows.append(("GPU: one trial (s)", _fmt(g["ours_s"], ".2f") if g else "not measured (no CUDA device)", "<= 1 s"))
    lines = ["| measure | value | target |", "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name, its widest vector unit and its bfloat16 flags, as lscpu reads them from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
        platform.machine(),
    )
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    simd = next((f for f in ("avx512f", "avx2") if f in flags), "no AVX2")
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({simd}; {', '.join(bf16) or 'no bfloat16 flags'})"


def environment(threads: list[int]) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "torch_threads_in_process": threads,
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every part, tiny (a CI smoke test, not a measurement)")
    ap.add_argument(
        "--parts",
        default="peak,trial,large_batch,study,workers,gpu",
        help="comma-separated subset of peak,trial,large_batch,study,workers,gpu",
    )
    ap.add_argument("--repeats", type=int, default=None, help="repeats per timing, median reported [3; quick 1]")
    ap.add_argument(
        "--references",
        default="plain,common",
        help="the trial part's reference trials: plain (REFERENCE: no batch norm, MLP head; JSON key trial) and "
        "common (COMMON: the default study's most common trial, batch norm and the compare head; trial_common)",
    )
    ap.add_argument("--study-trials", type=int, default=None, help="N for the study part [200; quick 3]")
    ap.add_argument("--study-pruners", default="median,none", help="pruners to run the study with")
    ap.add_argument(
        "--study-threads", type=int, default=None, help="torch threads of the study process [torch's default]"
    )
    ap.add_argument(
        "--study-db",
        type=Path,
        default=None,
        help="keep the study part's SQLite store here (a fresh file) [a temporary one]",
    )
    ap.add_argument(
        "--threads",
        default=f"1,{torch.get_num_threads()}",
        help="comma-separated torch thread counts the peak, trial and large_batch parts run at, each in turn "
        "[1 and torch's default, here %(default)s]",
    )
    ap.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="PostgreSQL server URL for the workers part (a database is created and dropped)",
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="MNIST folder [$HPO_DATA_DIR, else data]")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/results.json"), help="where the JSON goes")
    ap.add_argument("--user-loop-child", default=None, help=argparse.SUPPRESS)  # user_loop_process's child
    args = ap.parse_args(argv)
    if args.user_loop_child:
        user_loop_child(json.loads(args.user_loop_child))
        return {}

    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    parts = set(args.parts.split(","))
    references = args.references.split(",")
    if set(references) - set(REFERENCES):
        ap.error(f"--references: unknown {sorted(set(references) - set(REFERENCES))}; known: {', '.join(REFERENCES)}")
    try:
        thread_counts = sorted({int(n) for n in args.threads.split(",")})
    except ValueError:
        ap.error(f"--threads takes comma-separated whole numbers; got '{args.threads}'")
    if thread_counts[0] < 1:
        ap.error(f"--threads must all be at least 1; got '{args.threads}'")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data_dir = resolve_data_dir(args.data_dir)
    spec = reference_spec(sizes)
    pairs = cv_pairs(data_dir, sizes.pairs, spec.seed, download=False)

    res: dict[str, Any] = {
        "quick": args.quick,
        "environment": environment(thread_counts),
        "reference": REFERENCE,
        "sizes": sizes.__dict__,
        "repeats": repeats,
    }

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # Keyed by thread count: the user's loop runs at torch's default threads unless told
    # otherwise, and one thread each isolates what batching alone buys.
    for threads in thread_counts:
        torch.set_num_threads(threads)
        if "peak" in parts:
            log(f"GEMM peak at {threads} thread(s)")
            res.setdefault("peak", {})[str(threads)] = bench_peak(repeats)
        for reference in references if "trial" in parts else ():
            log(f"{reference} trial at {threads} thread(s): ours vs the sequential loop")
            key = "trial" if reference == "plain" else f"trial_{reference}"
            result = bench_trial(sizes, data_dir, pairs, repeats, reference=reference)
            res.setdefault(key, {})[str(threads)] = result
        if "large_batch" in parts:
            log(f"one net at large batch, {threads} thread(s)")
            res.setdefault("large_batch", {})[str(threads)] = large = bench_large_batch(pairs, sizes, repeats)
            if "trial" in parts and "plain" in references:
                large["ours_share"] = res["trial"][str(threads)]["ours_pairs_per_s"] / large["pairs_per_s"]
    torch.set_num_threads(thread_counts[0])
    if "gpu" in parts and torch.cuda.is_available():
        log("gpu trial")
        res["gpu"] = {r: bench_trial(sizes, data_dir, pairs, repeats, device="cuda", reference=r) for r in references}
    if "study" in parts:
        trials = args.study_trials or sizes.study_trials
        log(f"study: {trials} trials")
        res["study"] = bench_study(
            data_dir, sizes, trials, args.study_threads, args.study_pruners.split(","), args.study_db
        )
    if "workers" in parts:
        log("workers on PostgreSQL")
        res["workers"] = bench_workers(data_dir, sizes, args.postgres)
    res["environment"]["load_average_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=str))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
