"""Speed, measured side by side in one run: ratios of medians over interleaved repetitions, and each
repetition's own ratio with a 95% bootstrap interval.

Runs on random weights in GPT-2 small's exact shape (timings do not depend on the weight values), so it
needs no download. Prints a table and writes figures/benchmark_tl{major}.json.

    python -m experiments.benchmark [--reps 5] [--quick] [--device cuda]

Ratios are measured within one environment, so each TransformerLens major gets its own run and file:
``make benchmark`` (4.x, the bridge) writes figures/benchmark_tl4.json and ``make benchmark-tl3`` (3.9, both
backends) figures/benchmark_tl3.json.

On a GPU every timed call is bracketed by ``torch.cuda.synchronize()``, so a time is the work's, not the
launch's.

Goals (from the issues): cache_heads <= 1.05x a bare forward; a SAE-spliced forward <= 1.1x a bare one; a 50-temperature sweep <= 1.05x one forward;
interp sampling >= 5x TransformerLens's generate at batch 1 and >= 0.9x Hugging Face generate;
``python -m experiments`` end to end <= 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from experiments.common import DEFAULT_OUT, command_line, out_folder
from interp.backends import AVAILABLE_BACKENDS, DEFAULT_BACKEND, TL_MAJOR, TL_VERSION
from interp.caching import cache_heads
from interp.checkpoints import write_random_checkpoint
from interp.figures import atomic_write
from interp.hooks import run_until, temporary_hooks
from interp.loading import load_model, quiet_transformers
from interp.metrics import bootstrap_interval
from interp.patching import activation_patching, attribution_patching
from interp.sampling import generate, temperature_sweep

# What the rows run on: no row uses GPT-2 small's trained weights.
MODELS = {"default": "random weights in GPT-2 small's exact shape (interp.checkpoints.write_random_checkpoint, "
                     "seed 0)",
          "rows naming the bundled model": "the bundled mini-GPT-2 (2 layers, trained in this repo), with its SAE"}

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(contenders: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Time each contender ``reps`` times, taking turns, after one untimed warm-up call each."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - start)
    return times


def row(label: str, times: dict[str, list[float]], subject: str, baseline: str, goal: str,
        limit: float | None = None) -> dict:
    """Ratios of medians and of minima; and the geometric mean of the repetitions' own ratios (subject and
    baseline timed one after the other, so a slow spell of a shared machine hits both) with its 95% bootstrap
    interval over repetitions. ``limit``, the most the ratio may be (``goal`` says it in words), gives the
    verdict: ``"met"`` when the interval lies below it, ``"missed"`` above it, ``"undecided"`` across it; None
    for a row with no goal."""
    med = {k: statistics.median(v) for k, v in times.items()}
    logs = torch.tensor([[math.log(s / b) for s, b in zip(times[subject], times[baseline], strict=True)]],
                        dtype=torch.float64)
    low, high = (math.exp(float(bound)) for bound in bootstrap_interval(logs))
    return {"comparison": label, "subject": subject, "baseline": baseline, "repetitions": len(times[subject]),
            "subject_median_s": med[subject], "subject_min_s": min(times[subject]),
            "baseline_median_s": med[baseline], "baseline_min_s": min(times[baseline]),
            "ratio_median": med[subject] / med[baseline],
            "ratio_min": min(times[subject]) / min(times[baseline]),
            "ratio_paired": math.exp(float(logs.mean())), "ratio_paired_95": [low, high],
            "goal": goal, "verdict": None if limit is None else _verdict(low, high, limit)}


def _verdict(low: float, high: float, limit: float) -> str:
    return "met" if high < limit else "missed" if low > limit else "undecided"


def bench_cache_heads(models: dict, tokens: torch.Tensor, reps: int) -> list[dict]:
    rows = []
    for backend, model in models.items():
        with torch.no_grad():
            times = interleaved({  # cache_heads runs one forward without the unembedding; so does the baseline
                "forward": lambda m=model: m(tokens, return_type=None),
                "cache_heads": lambda m=model: cache_heads(m, tokens, layers=[5, 6], heads=[1, 5, 9],
                                                           kinds=("q", "k", "v", "pattern")),
            }, reps)
        rows.append(row(f"cache_heads, 2 layers x 3 heads, q/k/v/pattern ({backend}, {tokens.shape[0]}x"
                        f"{tokens.shape[1]} tokens) vs bare forward", times, "cache_heads", "forward", "<= 1.05x", 1.05))
    return rows


def cache_bytes(model, tokens) -> dict:
    selected = cache_heads(model, tokens, layers=[5, 6], heads=[1, 5, 9], kinds=("q", "k", "v", "pattern")).nbytes
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    full = sum(t.nbytes for t in cache.values())
    return {"cache_heads_bytes": selected, "run_with_cache_bytes": full, "fraction": selected / full}


def bench_sweep(model, reps: int) -> dict:
    temps = [0.05 * 1.13 ** i for i in range(50)]
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        times = interleaved({"forward": lambda: model(tokens),
                             "sweep_50": lambda: temperature_sweep(model, PROMPT, temps)}, reps)
    return row("temperature sweep, 50 temperatures, vs one forward", times, "sweep_50", "forward", "<= 1.05x", 1.05)


def bench_generate(models: dict, hf, batch: int, new_tokens: int, reps: int) -> list[dict]:
    """interp's generate (on the default backend) against Hugging Face's and each backend's own generate."""
    model = models[DEFAULT_BACKEND]
    prompts = [PROMPT[: 20 + 3 * i] for i in range(batch)] if batch > 1 else [PROMPT[:40]]
    tok = model.tokenizer
    tl_tokens = model.to_tokens([prompts[0]] * batch)  # TL and HF get equal-length prompts: no padding
    hf_ids = tl_tokens.clone()
    contenders = {
        "interp": lambda: generate(model, [prompts[0]] * batch, max_new_tokens=new_tokens, temperature=1.0),
        "hf": lambda: hf.generate(hf_ids, attention_mask=torch.ones_like(hf_ids), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0,
                                  pad_token_id=tok.eos_token_id),
    }
    for backend, tl_model in models.items():
        contenders[backend] = lambda m=tl_model: m.generate(
            tl_tokens, max_new_tokens=new_tokens, do_sample=True, temperature=1.0, stop_at_eos=False, verbose=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved(contenders, reps)
    rows = [row(f"sampling {new_tokens} tokens, batch {batch}: interp vs HF generate", times, "interp", "hf",
                ">= 0.9x HF throughput (ratio <= 1.11)", 1 / 0.9)]
    for backend in models:
        rows.append(row(f"sampling {new_tokens} tokens, batch {batch}: interp vs TransformerLens generate ({backend})",
                        times, "interp", backend, *((">= 5x faster (ratio <= 0.2)", 0.2) if batch == 1 else ("-",))))
    return rows


def bench_patching(model, reps: int) -> list[dict]:
    """Activation patching over every layer x position, per cell, and attribution patching, against a bare
    forward of the same tokens (the metric reads one logit)."""
    clean = model.to_tokens(PROMPT[:60])
    corrupted = model.to_tokens(PROMPT[:60].replace("fox", "cat"))
    n = min(clean.shape[1], corrupted.shape[1])
    clean, corrupted = clean[:, :n], corrupted[:, :n]
    cells = model.cfg.n_layers * n

    def metric(logits):
        return logits[:, -1, 42]

    with torch.no_grad():
        times = interleaved({"forward": lambda: model(corrupted),
                             "activation_patching": lambda: activation_patching(model, clean, corrupted, metric),
                             "attribution_patching": lambda: attribution_patching(model, clean, corrupted, metric)},
                            reps)
    per_cell = {**times, "activation_patching": [t / cells for t in times["activation_patching"]]}
    return [row(f"activation patching, {model.cfg.n_layers} layers x {n} positions, per cell, vs one forward",
                per_cell, "activation_patching", "forward", "<= 1x (one forward per cell)", 1.0),
            row("attribution patching (2 forwards + 1 backward) vs one forward", times, "attribution_patching",
                "forward", "<= 3x", 3.0)]


def _target_logprob(logits):  # the circuits rows' metric: the log-probability of token 42 at the last position
    return logits[:, -1].log_softmax(-1)[:, 42]


def counted_flops(fn: Callable[[], object]) -> int:
    """The FLOPs of the matmuls ``fn`` runs, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_circuits(model, reps: int, sample: int = 64) -> tuple[list[dict], dict]:
    """Edge attribution over all edges (32,491 in GPT-2 small's shape), 8 prompt pairs of 16 tokens: EAP
    against a bare forward, EAP-IG against a forward and backward, exact patching per edge (on a sample)
    against a forward; the process's peak memory growth over these rows, which bounds EAP-IG's; and the
    arithmetic of EAP and EAP-IG in forwards and forward-and-backwards (matmul FLOPs counted by torch)."""
    import resource

    from interp import circuits

    torch.manual_seed(0)
    device = model.cfg.device
    clean = torch.randint(0, model.cfg.d_vocab, (8, 16), device=device)
    corrupted = torch.randint(0, model.cfg.d_vocab, (8, 16), device=device)
    metric = _target_logprob

    def forward_backward():  # the metric's gradient at the embeddings: what one EAP-IG step costs at least
        leaves = []

        def leaf(act, hook):
            leaves.append(act.detach().requires_grad_(True))
            return leaves[-1]

        with torch.enable_grad(), temporary_hooks(model, [("hook_embed", leaf)]):
            metric(model(clean)).sum().backward(inputs=leaves)

    g = circuits.graph(model)
    edges = [g.edges[i] for i in torch.randperm(len(g.edges), generator=torch.Generator().manual_seed(0))[:sample]]

    chunk = circuits._edges_per_forward(clean)  # edge_attribution's default

    def exact_sample():
        with circuits._edge_hooks_on(model):
            circuits._exact(model, g, clean, corrupted, metric, chunk, edges)

    steps = 5

    def eap():
        return circuits.edge_attribution(model, clean, corrupted, metric, method="eap", progress=False)

    def eap_ig():
        return circuits.edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=steps,
                                         progress=False)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        times = interleaved({
            "forward": lambda: model(clean),
            "forward_backward": forward_backward,
            "eap": eap,
            "eap_ig": eap_ig,
            "exact_sample": exact_sample,
        }, reps)
    memory = {"edges": len(g.edges), "pairs": 8, "tokens": 16, "eap_ig_steps": steps,
              "peak_rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
              "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None}
    with torch.no_grad():  # the arithmetic each does, counted by torch (matmuls; elementwise ops not counted)
        flops = {name: counted_flops(fn) for name, fn in (("forward", lambda: model(clean)), ("eap", eap),
                                                          ("forward_backward", forward_backward), ("eap_ig", eap_ig))}
    memory |= {"eap_flops_in_forwards": flops["eap"] / flops["forward"],
               "eap_ig_flops_in_forward_backwards": flops["eap_ig"] / flops["forward_backward"]}
    per_edge = {**times, "exact_sample": [t / sample for t in times["exact_sample"]]}
    rows = [row(f"EAP, all {len(g.edges)} edges, 8 pairs x 16 tokens, vs one forward", times, "eap", "forward",
                "<= 3.5x", 3.5),
            row(f"EAP-IG ({steps} steps) vs one forward and backward", times, "eap_ig", "forward_backward",
                f"<= {1.1 * (steps + 1):.1f}x ((steps + 1) x 1.1)", 1.1 * (steps + 1)),
            row(f"exact edge patching, per edge ({sample} sampled edges, {chunk} per forward), vs one forward",
                per_edge, "exact_sample", "forward", "<= 1x", 1.0)]
    return rows, memory


def bench_exact_bundled(bundled, reps: int) -> dict:
    """Exact patching of every edge of the bundled model (46), 8 prompt pairs of 16 tokens, as a user calls it
    (``edge_attribution(method="exact")``, its two unpatched forwards included), per edge, against one forward
    of the bundled model."""
    from interp import circuits

    device = bundled.cfg.device
    torch.manual_seed(0)
    clean, corrupted = (torch.randint(0, bundled.cfg.d_vocab, (8, 16), device=device) for _ in range(2))
    n_edges = len(circuits.graph(bundled).edges)
    with torch.no_grad():
        times = interleaved({"forward": lambda: bundled(clean),
                             "exact": lambda: circuits.edge_attribution(bundled, clean, corrupted, _target_logprob,
                                                                        method="exact", progress=False)}, reps)
    per_edge = {**times, "exact": [t / n_edges for t in times["exact"]]}
    return row(f"exact edge patching, bundled model, all {n_edges} edges, 8 pairs x 16 tokens, per edge, vs one "
               "forward", per_edge, "exact", "forward", "<= 1x", 1.0)


def bench_harvest(model, label: str, corpus: Path, reps: int) -> tuple[list[dict], dict]:
    """Harvest throughput against a bare forward of the same rows that also stops at the last hook, on a
    stdlib package, one process; and the time spent writing shards (serialising, hashing, writing: between
    the forwards, on the same thread) as a share of the harvest's wall time."""
    from interp import harvest as hv

    hooks = [f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"]
    options = dict(context=128, batch_size=8, shard_rows=32, pattern="**/*.py")
    device = model.cfg.device
    rows = torch.tensor(list(hv._rows(hv._documents(corpus, options["pattern"], model.cfg.d_vocab), model.tokenizer,
                                      options["context"])))
    write_time = [0.0]
    real_write = hv._save_shard

    def timed_write(*args):
        start = time.perf_counter()
        real_write(*args)
        write_time[0] += time.perf_counter() - start

    def bare():
        for start in range(0, len(rows), options["batch_size"]):
            run_until(model, rows[start:start + options["batch_size"]].to(device), hooks)

    def harvest_once():
        with tempfile.TemporaryDirectory() as tmp:
            hv.harvest(model, corpus, hooks=hooks, out=Path(tmp) / "h", progress=False, **options)

    hv._save_shard = timed_write
    try:
        times = interleaved({"bare_forward": bare, "harvest": harvest_once}, reps)
    finally:
        hv._save_shard = real_write
    tokens = rows.numel()
    calls = reps + 1  # the warm-up call writes too
    share = write_time[0] / calls / statistics.median(times["harvest"])
    detail = {"model": label, "corpus": f"the stdlib's {corpus.name} package", "rows": len(rows), "tokens": tokens, "hooks": hooks,
              "harvest_tokens_per_s": tokens / statistics.median(times["harvest"]),
              "bare_tokens_per_s": tokens / statistics.median(times["bare_forward"]),
              "shard_writing_share_of_wall": share}
    return [row(f"harvest ({label}, stdlib {corpus.name}: {len(rows)} rows x 128 tokens, 1 process) vs bare forward stopping at the "
                "same hook: time, so >= 0.9x throughput is <= 1.11x", times, "harvest", "bare_forward",
                "<= 1.11x (>= 0.9x tokens/s)", 1 / 0.9)], detail


def bench_sae(model, bundled, reps: int) -> tuple[list[dict], dict]:
    """A forward with a SAE spliced in (interp.sae.splice) against a bare one: the bundled model with the
    bundled SAE (4,096 latents), and GPT-2 small's shape with a random TopK SAE of 24,576 latents; and SAE
    training throughput against harvesting the same tokens (the bundled model, the stdlib's email package)."""
    import email

    from interp import harvest as hv
    from interp import sae as S

    device = model.cfg.device
    small = S.load("bundled").to(device)
    torch.manual_seed(0)
    big = S.SAE(model.cfg.d_model, 24576, hook_name="blocks.6.hook_resid_pre", architecture="topk", k=32)
    with torch.no_grad():
        for p in big.parameters():
            p.normal_(0, 0.02)
    big = big.to(device)
    rows = []
    for label, subject, sae, tokens in (
            ("bundled model + bundled SAE (4,096 latents), 8 x 128 tokens", bundled, small,
             torch.randint(0, 50257, (8, 128), device=device)),
            ("GPT-2 small's shape + TopK SAE of 24,576 latents at layer 6, 4 x 128 tokens", model, big,
             torch.randint(0, 50257, (4, 128), device=device))):

        def spliced(subject=subject, sae=sae, tokens=tokens):
            with S.splice(subject, sae):
                subject(tokens)

        with torch.no_grad():
            times = interleaved({"forward": lambda subject=subject, tokens=tokens: subject(tokens),
                                 "spliced": spliced}, reps)
        rows.append(row(f"spliced forward ({label}) vs bare forward", times, "spliced", "forward",
                        "<= 1.1x at the bundled SAE's width; reported for 24,576", 1.1 if sae is small else None))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        harvested = hv.open(hv.harvest(bundled, Path(email.__file__).parent, hooks=[small.hook_name],
                                       out=Path(tmp) / "h", pattern="**/*.py", progress=False))
        harvest_s = time.perf_counter() - start
        tokens = harvested.manifest["rows"] * (harvested.manifest["context"] - 1)  # BOS left out of training
        steps = tokens // 4096
        start = time.perf_counter()
        S.train(harvested, hook=small.hook_name, d_sae=4096, k=16, batch_size=4096, steps=steps, progress=False,
                device=device)
        _sync()
        train_s = time.perf_counter() - start
    detail = {"harvest_tokens_per_s": harvested.manifest["rows"] * harvested.manifest["context"] / harvest_s,
              "train_tokens_per_s": steps * 4096 / train_s, "train_steps": steps,
              "sae": "TopK, k=16, 4,096 latents, batch 4,096 (the bundled recipe's shape)", "train_device": device}
    return rows, detail


def bench_harvest_processes() -> dict:
    """Wall time of the harvest command with 1 and 2 processes (torchrun, gloo) on the stdlib's email
    package with the bundled model, model loading included."""
    import email

    corpus = str(Path(email.__file__).parent)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            args = ["-m", "interp.harvest", corpus, "--out", f"{tmp}/n{n}", "--hook", "blocks.1.hook_resid_pre",
                    "--pattern", "**/*.py", "--no-progress", "--stats-only"]
            command = [sys.executable, *args] if n == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                              "--standalone", "--nproc_per_node=2", *args]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            out[f"{n}_process_s"] = time.perf_counter() - start
        identical = all((Path(tmp) / "n1" / p.name).read_bytes() == p.read_bytes()
                        for p in (Path(tmp) / "n2").iterdir())
    return {**out, "speedup": out["1_process_s"] / out["2_process_s"], "identical_outputs": identical,
            "note": "2 cores: torchrun gives each process 1 thread; model loading (about 6 s) is in both"}


def roofline(model, reps: int) -> dict:
    """Best observed matmul rate against the best observed forward (minimum times: peak against peak,
    which a noisy shared machine distorts least)."""
    device = model.cfg.device
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    tokens = torch.randint(0, 50257, (4, 256), device=device)
    with torch.no_grad():
        times = interleaved({"mm": lambda: a @ b, "fwd": lambda: model(tokens)}, reps)
    gflops = 2 * 2048 ** 3 / min(times["mm"]) / 1e9
    fwd = [min(times["fwd"])]
    n_tokens = tokens.numel()
    cfg = model.cfg
    # 2 FLOPs per multiply-add: the weight matmuls (incl. unembedding) plus attention's QK^T and AV.
    weights = cfg.n_layers * (4 * cfg.d_model ** 2 + 2 * cfg.d_model * cfg.d_mlp) + cfg.d_model * cfg.d_vocab
    flops_per_token = 2 * weights + 2 * 2 * cfg.n_layers * tokens.shape[1] / 2 * cfg.d_model
    achieved = flops_per_token * n_tokens / statistics.median(fwd) / 1e9
    return {"matmul_gflops": gflops, "forward_tokens_per_s": n_tokens / statistics.median(fwd),
            "forward_gflops": achieved, "fraction_of_matmul_peak": achieved / gflops}


def end_to_end(args: list[str], goal: str) -> dict:
    """Wall time of ``python -m experiments ARGS`` with the bundled model, offline."""
    command = [sys.executable, "-m", "experiments", *args]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"python -m experiments {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return {"command": "python -m experiments " + " ".join(args), "seconds": time.perf_counter() - start,
            "goal": goal}


def _harvest(results: dict, model, bundled, reps: int) -> None:
    import email
    import json as json_module

    details = []
    for label, subject, corpus in (("bundled model", bundled, Path(email.__file__).parent),
                                   ("GPT-2 small's shape", model, Path(json_module.__file__).parent)):
        rows, detail = bench_harvest(subject, label, corpus, reps)
        results["rows"].extend(rows)
        details.append(detail)
    results["harvest"] = {"throughput": details}
    if model.cfg.device == "cpu":
        results["harvest"]["processes"] = bench_harvest_processes()


def _sae(results: dict, model, bundled, reps: int) -> None:
    rows, detail = bench_sae(model, bundled, reps)
    results["rows"].extend(rows)
    results["sae_training"] = detail


def _circuits(results: dict, model, bundled, reps: int) -> None:
    rows, memory = bench_circuits(model, reps)
    results["rows"].extend([*rows, bench_exact_bundled(bundled, 4 * reps)])  # the bundled rows are cheap
    results["circuits_memory"] = memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per contender (default: 5)")
    parser.add_argument("--quick", action="store_true", help="skip batch 16 and the end-to-end run")
    parser.add_argument("--out", type=out_folder, default=DEFAULT_OUT, help="where benchmark_tl{major}.json goes (default: figures/)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    torch.manual_seed(0)
    device = args.device
    results: dict = {"command": command_line(), "device": device, "torch_threads": torch.get_num_threads(),
                     "transformer_lens": TL_VERSION, "backends": list(AVAILABLE_BACKENDS), "models": MODELS,
                     "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        print("writing a random checkpoint in GPT-2 small's shape ...", file=sys.stderr, flush=True)
        ckpt = write_random_checkpoint(Path(tmp) / "random-gpt2-small-shape", seed=0)
        models = {b: load_model(ckpt, backend=b, device=device) for b in AVAILABLE_BACKENDS}
        model = models[DEFAULT_BACKEND]
        bundled = load_model("bundled", device=device)  # the rows that name the bundled model
        from transformers import GPT2LMHeadModel

        with quiet_transformers():
            hf = GPT2LMHeadModel.from_pretrained(ckpt, local_files_only=True).eval().to(device)
        tokens = model.to_tokens([PROMPT] * 4)
        steps = [
            ("cache_heads", lambda: results["rows"].extend(bench_cache_heads(models, tokens, args.reps))),
            ("cache_heads, 4 x 256 tokens", lambda: results["rows"].extend(
                bench_cache_heads(models, torch.randint(0, 50257, (4, 256), device=device), args.reps))),
            ("cache bytes", lambda: results.update(cache_bytes=cache_bytes(model, tokens))),
            ("temperature sweep", lambda: results["rows"].append(bench_sweep(model, args.reps))),
            ("sampling, batch 1", lambda: results["rows"].extend(
                bench_generate(models, hf, 1, 64, args.reps))),
        ]
        if not args.quick:
            steps.append(("sampling, batch 16", lambda: results["rows"].extend(
                bench_generate(models, hf, 16, 64, max(2, args.reps // 2)))))
        steps.append(("patching", lambda: results["rows"].extend(bench_patching(model, max(2, args.reps // 2)))))
        steps.append(("circuits", lambda: _circuits(results, model, bundled, args.reps)))
        steps.append(("harvest", lambda: _harvest(results, model, bundled, args.reps)))
        steps.append(("sae", lambda: _sae(results, model, bundled, 4 * args.reps)))  # cheap rows, noisy machine
        steps.append(("roofline", lambda: results.update(roofline=roofline(model, args.reps))))
        if not args.quick:
            offline = ["--model", "bundled", "--device", device]
            steps.append(("python -m experiments end to end", lambda: results.update(end_to_end=end_to_end(
                [*offline, "--out", str(Path(tmp) / "figures")], "<= 180 s"))))
            steps.append(("mechanisms family end to end", lambda: results.update(mechanisms=end_to_end(
                ["mechanisms", *offline, "--no-images", "--out", str(Path(tmp) / "mechanisms")], "<= 60 s"))))
        for name, step in steps:
            start = time.perf_counter()
            print(f"  {name} ...", file=sys.stderr, flush=True, end="")
            step()
            print(f" {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)

    print(f"\n{'comparison':78s} {'median':>8s} {'min':>8s} {'paired [95%]':>20s}  goal")
    for r in results["rows"]:
        low, high = r["ratio_paired_95"]
        print(f"{r['comparison']:78s} {r['ratio_median']:7.3f}x {r['ratio_min']:7.3f}x "
              f"{r['ratio_paired']:6.3f}x [{low:.3f}, {high:.3f}]  {r['goal']}" + (f": {r['verdict']}" if r["verdict"] else ""))
    cb = results["cache_bytes"]
    print(f"\ncache_heads stores {cb['cache_heads_bytes']:,} B vs run_with_cache {cb['run_with_cache_bytes']:,} B "
          f"({100 * cb['fraction']:.2f}%)")
    rl = results["roofline"]
    print(f"matmul {rl['matmul_gflops']:.0f} GFLOP/s; forward {rl['forward_tokens_per_s']:.0f} tokens/s = "
          f"{rl['forward_gflops']:.0f} GFLOP/s = {100 * rl['fraction_of_matmul_peak']:.0f}% of the matmul rate")
    for detail in results["harvest"]["throughput"]:
        print(f"harvest, {detail['model']}: {detail['harvest_tokens_per_s']:.0f} tokens/s against "
              f"{detail['bare_tokens_per_s']:.0f} bare; writing shards {100 * detail['shard_writing_share_of_wall']:.1f}% "
              "of the wall time (goal < 10%)")
    if "processes" in results["harvest"]:
        p = results["harvest"]["processes"]
        print(f"harvest command, 1 process {p['1_process_s']:.1f}s, 2 processes {p['2_process_s']:.1f}s "
              f"(x{p['speedup']:.2f}; identical outputs: {p['identical_outputs']})")
    cm = results["circuits_memory"]
    print(f"EAP, EAP-IG and exact over {cm['edges']} edges: the process's peak RSS grew by "
          f"{cm['peak_rss_growth_mib']:.0f} MiB (a bound on EAP-IG's)"
          + (f"; CUDA peak {cm['cuda_peak_mib']:.0f} MiB" if cm["cuda_peak_mib"] is not None else ""))
    print(f"arithmetic (matmul FLOPs, counted by torch): EAP {cm['eap_flops_in_forwards']:.2f} forwards, EAP-IG "
          f"{cm['eap_ig_flops_in_forward_backwards']:.2f} forward-and-backwards")
    st = results["sae_training"]
    print(f"SAE training ({st['sae']}): {st['train_tokens_per_s']:.0f} tokens/s; harvesting them "
          f"{st['harvest_tokens_per_s']:.0f} tokens/s")
    for key in ("end_to_end", "mechanisms"):
        if key in results:
            print(f"{results[key]['command']}: {results[key]['seconds']:.0f}s end to end (goal {results[key]['goal']})")
    name = f"benchmark_tl{TL_MAJOR}.json" if device == "cpu" else f"benchmark_tl{TL_MAJOR}_{device.split(':')[0]}.json"
    atomic_write(args.out / name, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
