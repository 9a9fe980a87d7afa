"""The one runner behind ``python -m experiments`` and every ``python -m experiments.<family>``.

It validates every family's options before any work, resolves the model once, then for each family seeds,
times, shows progress, and writes the figures atomically with their data and manifest entries.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from types import ModuleType

from experiments import common
from experiments.registry import families
from interp.architecture import architecture
from interp.figures import FigureWriter
from interp.loading import ModelLoadError
from interp.specs import resolve

USAGE = """Regenerate figures: every family, or the ones named.

    python -m experiments                                   # every figure family
    python -m experiments temperature --temperatures 0.5 1 2
    python -m experiments head_attention temperature --model bundled --prompt "Once upon a time"
    python -m experiments --list

With no --model, GPT-2 small is used when its weights are cached or downloadable; otherwise the run says so
and uses the bundled offline model. Options a family declares apply to every selected family that has them.
"""


def _option(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def _config_fields(family: ModuleType) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(family.Config) if f.name != "seed"]  # --seed is shared


def build_parser(registry: dict[str, ModuleType], prog: str = "python -m experiments",
                 only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=USAGE if only is None else registry[only].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if only is None:
        parser.add_argument("families", nargs="*", metavar="FAMILY",
                            help=f"families to run (default: all): {', '.join(registry)}")
        parser.add_argument("--list", action="store_true", help="list the families and exit")
    common.add_common_args(parser)
    seen: dict[str, str] = {}
    for name, family in registry.items():
        if only is not None and name != only:
            continue
        group = parser.add_argument_group(f"{name} options")
        hints = typing.get_type_hints(family.Config)
        for field in _config_fields(family):
            if field.name in seen:
                continue  # the same option in two families: added once, read by both
            seen[field.name] = name
            default = field.default
            kwargs = dict(default=None, help=f"{field.metadata.get('help', '')} (default: "
                          f"{' '.join(map(str, default)) if isinstance(default, tuple) else default})")
            if isinstance(default, tuple):
                kwargs |= dict(nargs="+", type=typing.get_args(hints[field.name])[0], metavar="X")
            else:
                kwargs |= dict(type=type(default))
            group.add_argument(_option(field), dest=field.name, **kwargs)
    return parser


def _configs(selected: dict[str, ModuleType], args, given: set[str]) -> dict[str, object]:
    """Each selected family's Config from the options, validated; an option no selected family has is an error."""
    owned = {f.name for family in selected.values() for f in _config_fields(family)}
    stray = sorted(given - owned)
    if stray:
        raise SystemExit(f"error: {', '.join('--' + s.replace('_', '-') for s in stray)}: no selected family "
                         f"({', '.join(selected)}) takes this option")
    configs = {}
    for name, family in selected.items():
        values = {f.name: getattr(args, f.name) for f in _config_fields(family) if f.name in given}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            configs[name] = family.Config(**values, seed=args.seed)
        except (TypeError, ValueError) as err:
            raise SystemExit(f"error: {name}: {err}") from None
    return configs


def _weightless_meta(spec) -> dict:
    return {"model": {"spec": spec.spec, "label": spec.label, "weights": "architecture only"},
            "backend": "none (weightless Hugging Face skeleton)"}


def main(argv: list[str] | None = None, *, only: str | None = None) -> int:
    """Run the selected families. ``only`` is the standalone entry of one family (``python -m experiments.X``)."""
    registry = families()
    prog = "python -m experiments" if only is None else f"python -m experiments.{only}"
    args = build_parser(registry, prog, only).parse_intermixed_args(argv)
    if only is None and args.list:
        for name, family in registry.items():
            print(f"{name:22s} {family.DESCRIPTION}")
        return 0
    names = [only] if only is not None else (args.families or list(registry))
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SystemExit(f"error: unknown family {', '.join(map(repr, unknown))}: choose from {', '.join(registry)}")
    selected = {name: registry[name] for name in dict.fromkeys(names)}
    given = {f.name for family in registry.values() for f in _config_fields(family)
             if getattr(args, f.name, None) is not None}
    configs = _configs(selected, args, given)  # every bad option fails here, before any model is loaded
    if args.out is None:
        args.out = common.default_out(list(selected), {name: getattr(args, name) for name in sorted(given)},
                                      everything=list(selected) == list(registry))
        if args.out != common.DEFAULT_OUT:
            print(f"writing into {args.out}: a run of some families, or with other options, leaves the gallery "
                  f"in {common.DEFAULT_OUT} alone (--out {common.DEFAULT_OUT} replaces it)", file=sys.stderr)

    try:
        spec = resolve(args.model or common.DEFAULT_MODEL)
        skeleton = None if all(f.NEEDS_WEIGHTS for f in selected.values()) else architecture(spec.spec)
    except ModelLoadError as err:
        raise SystemExit(f"error: {err}") from None
    model = None
    if any(family.NEEDS_WEIGHTS for family in selected.values()):
        print(f"loading {args.model or 'GPT-2 small (gpt2)'} ({args.backend}) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        model = common.resolve_model(args.model, backend=args.backend, device=args.device)
        print(f"loaded {common.model_info(model).label} in {time.perf_counter() - start:.1f}s", file=sys.stderr,
              flush=True)
    meta = (common.run_meta(model, args.seed) if model is not None else
            common.RunMeta(spec.spec, spec.label, "architecture only", "none", args.seed, common.command_line()))
    times: list[tuple[str, float, list]] = []
    run_start = time.perf_counter()
    with FigureWriter(args.out, meta.as_dict(), formats=common.image_formats(args)) as writer:
        for i, (name, family) in enumerate(selected.items(), start=1):
            print(f"\n[{i}/{len(selected)}] {name}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            common.seed_everything(args.seed)
            subject = model if family.NEEDS_WEIGHTS else skeleton
            try:
                result = family.compute(subject, configs[name],
                                        progress=lambda line: print(line, file=sys.stderr, flush=True))
            except (ValueError, ModelLoadError) as err:  # e.g. a prompt longer than the context window
                raise SystemExit(f"error: {name}: {err}") from None
            elapsed = time.perf_counter() - start
            print(family.summary(result))
            figure_meta = {"family": name} | ({} if family.NEEDS_WEIGHTS else _weightless_meta(spec))
            paths = []
            for figure in family.figures(result):
                paths += writer.save(figure.fig, figure.name, figure.data, params=dataclasses.asdict(configs[name]),
                                     wall_seconds=elapsed, meta=figure_meta, pages=figure.pages)
            times.append((name, time.perf_counter() - start, paths))

    if writer.removed:
        print(f"removed {len(writer.removed)} image(s) of an earlier run that this run could not remake (no image "
              f"export): {' '.join(p.name for p in writer.removed)}", file=sys.stderr)
    print(f"\nwrote {sum(len(p) for _, _, p in times)} files into {args.out} in "
          f"{time.perf_counter() - run_start:.1f}s:", file=sys.stderr)
    for name, seconds, paths in times:
        print(f"  {name:20s} {seconds:6.1f}s  " + " ".join(p.name for p in paths), file=sys.stderr)
    print(f"  manifest: {args.out / 'manifest.json'}", file=sys.stderr)
    return 0
