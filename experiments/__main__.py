"""Regenerate every figure: ``python -m experiments`` (what ``make figures`` runs).

Loads the model once and runs each experiment in turn: parameter_breakdown, head_attention, temperature.
The default model is GPT-2 small; when its weights are neither cached nor downloadable, the run says so and
uses the bundled offline model. ``--model gpt2`` insists on GPT-2 and fails instead.
"""

from __future__ import annotations

import argparse
import sys
import time

from experiments import common, head_attention, parameter_breakdown, temperature

EXPERIMENTS = ("parameter_breakdown", "head_attention", "temperature")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]",
                        help=f"run only these experiments, from: {', '.join(EXPERIMENTS)}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = EXPERIMENTS if args.only is None else tuple(x.strip() for x in args.only.split(",") if x.strip())
    unknown = [x for x in only if x not in EXPERIMENTS]
    if unknown or not only:
        raise SystemExit(f"error: --only {args.only!r}: choose from {', '.join(EXPERIMENTS)}")
    shared = ["--backend", args.backend, "--seed", str(args.seed), "--out", str(args.out)]
    shared += ["--no-images"] if args.no_images else []
    shared += ["--svg"] if args.svg else []
    shared += ["--device", args.device] if args.device else []
    times: list[tuple[str, float, list]] = []
    run_start = time.perf_counter()

    model = None
    if set(only) - {"parameter_breakdown"}:
        print(f"loading {args.model or 'GPT-2 small (gpt2)'} ({args.backend}) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        model = common.resolve_model(args.model, backend=args.backend, device=args.device)
        label = common.model_info(model).label
        print(f"loaded {label} in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    if model is not None:
        writer = common.writer_for(model, args)
    else:  # only the architecture figure: no weights, no model
        meta = common.RunMeta(args.model or "gpt2", args.model or "gpt2", "architecture only", "none", args.seed,
                              common.command_line())
        writer = parameter_breakdown.FigureWriter(args.out, meta.as_dict(), formats=common.image_formats(args))
    with writer:
        for i, name in enumerate(only, start=1):
            print(f"\n[{i}/{len(only)}] {name}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            if name == "parameter_breakdown":
                # Architecture only: GPT-2 small's exact counts need no weights, whatever model the run uses.
                spec = args.model if args.model not in (None, "bundled") else "gpt2"
                paths = parameter_breakdown.run(spec, writer)
            else:
                module = {"head_attention": head_attention, "temperature": temperature}[name]
                paths = module.run(model, module.build_parser().parse_args(shared), writer,
                                   progress=lambda line: print(line, file=sys.stderr, flush=True))
            times.append((name, time.perf_counter() - start, paths))

    print(f"\nwrote {sum(len(p) for _, _, p in times)} files into {args.out} in "
          f"{time.perf_counter() - run_start:.1f}s:", file=sys.stderr)
    for name, seconds, paths in times:
        print(f"  {name:20s} {seconds:6.1f}s  " + " ".join(p.name for p in paths), file=sys.stderr)
    print(f"  manifest: {args.out / 'manifest.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
