"""Circuits at the level of edges: which sender's output, read by which receiver, carries a behaviour.

The graph is the standard one (as in ACDC, EAP, EAP-IG and MIB), so numbers compare with the literature:

- **senders**: ``input`` (the embeddings, ``blocks.0.hook_resid_pre``), every attention head ``a{L}.h{H}``
  (its output ``z @ W_O``, TransformerLens's ``attn.hook_result``) and every MLP ``m{L}`` (``hook_mlp_out``);
- **receivers**: every head's query, key and value input separately (``a{L}.h{H}`` with input ``q``, ``k`` or
  ``v``, at ``hook_{q,k,v}_input``), every MLP's input (``m{L}``, at ``hook_mlp_in``) and the ``logits`` (the
  last residual stream, ``blocks.{n-1}.hook_resid_post``);
- **edges**: from each sender to every receiver downstream of it. A head feeds the MLP of its own layer and
  every head and MLP of later layers; an MLP feeds the heads and MLPs of later layers. GPT-2 small has
  32,491 edges; the bundled model 46.

The residual stream is the sum of the senders' outputs (plus biases, which are the same in every run), so a
receiver's input can be rebuilt edge by edge: patching an edge adds ``source - current`` of that one sender's
output to that one receiver's input and to nothing else.

**One convention for every method**: an edge's score is metric(patched run) - metric(unpatched run of the same
direction), with the metric of ``interp.metrics`` (a ``[batch]`` tensor or a scalar). ``"noising"`` (the
default) patches the corrupted sender output into the clean run: how much the behaviour needs the edge.
``"denoising"`` patches the clean output into the corrupted run: whether the edge alone restores it. A circuit
that needs several edges at once (an AND) looks different from the two sides. Rank by ``|score|``.

- ``method="exact"``: one edge patched and nothing else, one forward per edge (batched). The oracle.
- ``method="eap"``: the first-order estimate of exact (Syed et al. 2023): ``(source - current sender output) ·
  d metric / d (receiver input)``, the gradient taken on the unpatched run of the direction (clean for
  noising, corrupted for denoising). Two forwards and one backward, whatever the number of edges.
- ``method="eap-ig"``: integrated gradients (Hanna et al. 2024), interpolating the *inputs*: the embeddings
  move on a straight line from the unpatched run's to the source's, and the gradient at each receiver is
  averaged over ``steps`` midpoints. Chosen because it is the variant of the paper's main results, and the
  one whose completeness is exact on the cut that matters for a faithfulness check: the scores of all edges
  out of ``input`` sum to metric(source) - metric(unpatched). It converges to an integrated attribution, not
  to the single-edge patch (for the metric a·b with a = b = 1 clean and 0 corrupted, IG gives a -0.5 where
  exact noising gives -1 and denoising 0), and the two directions differ only in sign.

Example:
    >>> clean, corrupt = interp.to_tokens(model, clean_texts), interp.to_tokens(model, corrupt_texts)
    >>> scores = edge_attribution(model, clean, corrupt, lambda logits: logits[:, -1, token], method="eap-ig")
    >>> scores.to_frame().head()          # sender, receiver, input, score, ci_low, ci_high
    >>> circuit = scores.circuit(20)
    >>> faithfulness(model, circuit, clean, corrupt, metric)   # 1: the circuit alone does it; 0: nothing
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp._progress import progress_bar
from interp._repr import concise_repr
from interp.backends import layer_norm, ln_affine
from interp.hooks import logits_for_gradients, run_until, temporary_hooks
from interp.inputs import check_positive_int, check_tokens
from interp.metrics import Metric, bootstrap_interval, check_metric, metric_values

__all__ = ["CIRCUIT_FRACTIONS", "Edge", "EdgeScores", "FaithfulnessCurve", "Graph", "edge_attribution",
           "faithfulness", "faithfulness_curve", "graph", "patch_edges"]

METHODS = ("exact", "eap", "eap-ig")
DIRECTIONS = ("noising", "denoising")
# how a metric error names the two unpatched runs of any method and direction
_BASE_RUN = "the run being patched (clean when noising, corrupted when denoising)"
_SOURCE_RUN = "the run the patches come from (corrupted when noising, clean when denoising)"
# Circuit sizes as fractions of all edges, as MIB compares methods.
CIRCUIT_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Edge(NamedTuple):
    """``sender -> receiver<input>``, named as in the EAP-IG code: senders ``input``, ``a{L}.h{H}``, ``m{L}``;
    receivers ``a{L}.h{H}`` (input ``q``, ``k`` or ``v``), ``m{L}`` and ``logits`` (input ``""``)."""

    sender: str
    receiver: str
    input: str = ""

    @property
    def name(self) -> str:
        return f"{self.sender}->{self.receiver}" + (f"<{self.input}>" if self.input else "")


@dataclass(frozen=True)
class Graph:
    """The edge graph of a model with ``n_layers`` layers of ``n_heads`` heads.

    ``senders`` are in forward order (``input``, then each layer's heads and its MLP); ``edges`` are ordered by
    receiver in forward order (each layer's q, k, v inputs head by head, then its MLP, then the logits), and
    within a receiver by sender.
    """

    n_layers: int
    n_heads: int

    @cached_property
    def senders(self) -> tuple[str, ...]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{head}" for head in range(self.n_heads)] + [f"m{layer}"]
        return tuple(names)

    @cached_property
    def sender_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.senders)}

    def upstream(self, receiver_layer: int, receiver_is_mlp: bool) -> int:
        """How many senders (a prefix of ``senders``) feed a receiver at ``receiver_layer``."""
        prefix = 1 + receiver_layer * (self.n_heads + 1)  # input and every earlier layer
        return prefix + self.n_heads if receiver_is_mlp else prefix  # an MLP also reads its own layer's heads

    @cached_property
    def receivers(self) -> tuple[tuple[str, str, int, int], ...]:
        """``(receiver, input, layer, number of upstream senders)`` in forward order; the logits' layer is
        ``n_layers``."""
        out = []
        for layer in range(self.n_layers):
            for head in range(self.n_heads):
                for qkv in "qkv":
                    out.append((f"a{layer}.h{head}", qkv, layer, self.upstream(layer, False)))
            out.append((f"m{layer}", "", layer, self.upstream(layer, True)))
        out.append(("logits", "", self.n_layers, len(self.senders)))
        return tuple(out)

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        return tuple(Edge(self.senders[s], receiver, qkv) for receiver, qkv, _, n in self.receivers
                     for s in range(n))

    @cached_property
    def edge_index(self) -> dict[Edge, int]:
        return {edge: i for i, edge in enumerate(self.edges)}

    def check_edges(self, edges: Sequence[Edge]) -> tuple[Edge, ...]:
        """Each item as an ``Edge`` of this graph; ``ValueError`` naming the first that is not."""
        if isinstance(edges, Edge | str) or not isinstance(edges, Iterable):
            raise TypeError(f"edges must be a list of Edge (e.g. scores.circuit(20)), got {type(edges).__name__}")
        out = []
        for edge in edges:
            edge = Edge(*edge) if isinstance(edge, tuple) else edge
            if edge not in self.edge_index:
                raise ValueError(f"{edge!r} is not an edge of this model's graph ({self.n_layers} layers x "
                                 f"{self.n_heads} heads): see interp.circuits.graph(model).edges")
            out.append(edge)
        return tuple(out)


def graph(model) -> Graph:
    """The edge graph of ``model``.

    Example:
        >>> len(graph(gpt2_small).edges)
        32491
    """
    return Graph(model.cfg.n_layers, model.cfg.n_heads)


# ---------------------------------------------------------------------------------------------- the engine


# The MLP's input (its receiver) is a hook point to turn on. A head's output (its sender) is z @ W_O, computed
# from hook_z for the heads a run needs: ``use_attn_result`` would carry [batch, pos, head, d_model] through
# every pass, the backward included, for every head. A head's q, k and v inputs are not split out either
# (``use_split_qkv_input``, the same cost): a patch there recomputes that head's q (k, v) from the edited
# residual through ln1, and a gradient there is the gradient at hook_q (k, v) taken back through W_Q and ln1
# (``_ln1_backward``).
_FLAGS = ("use_hook_mlp_in",)


@contextlib.contextmanager
def _edge_hooks_on(model) -> Iterator[None]:
    """Turn on the hook points the graph needs (the MLP input), and restore the model's flags in ``finally``."""
    before = {flag: bool(getattr(model.cfg, flag, False)) for flag in _FLAGS}
    try:
        for flag in _FLAGS:
            getattr(model, f"set_{flag}")(True)
        yield
    finally:
        for flag in _FLAGS:
            getattr(model, f"set_{flag}")(before[flag])


def _sender_hooks(model, g: Graph, store: dict[int, Tensor], senders: Iterable[int] | None = None) -> list:
    """Hooks that record the output of each sender (of ``senders``, default all) in this run into
    ``store[sender index]``: ``[batch, pos, d_model]``. A head's is ``z @ W_O`` of that head, without b_O
    (TransformerLens's ``hook_result``)."""
    wanted = set(range(len(g.senders)) if senders is None else senders)

    def keep(index: int):
        def hook(act, hook):
            store[index] = act.detach()
        return hook

    def keep_heads(layer: int, heads: list[int]):
        first = g.sender_index[f"a{layer}.h0"]
        W_O = model.blocks[layer].attn.W_O.detach()[heads]  # [head, d_head, d_model]

        def hook(z, hook):  # [batch, pos, head, d_head]
            outputs = einops.einsum(z.detach()[:, :, heads], W_O.to(z.dtype),
                                    "batch pos head d_head, head d_head d_model -> head batch pos d_model")
            for head, output in zip(heads, outputs):
                store[first + head] = output
        return hook

    hooks = [("blocks.0.hook_resid_pre", keep(0))] if 0 in wanted else []
    for layer in range(g.n_layers):
        first = g.sender_index[f"a{layer}.h0"]
        heads = [head for head in range(g.n_heads) if first + head in wanted]
        if heads:
            hooks.append((f"blocks.{layer}.attn.hook_z", keep_heads(layer, heads)))
        if g.sender_index[f"m{layer}"] in wanted:
            hooks.append((f"blocks.{layer}.hook_mlp_out", keep(g.sender_index[f"m{layer}"])))
    return hooks


def _head_of(receiver: str) -> int | None:
    return int(receiver.split(".h")[1]) if receiver.startswith("a") else None


def _projection(model, layer: int, qkv: str) -> tuple[Tensor, Tensor]:
    """``W_{Q,K,V}`` ``[head, d_model, d_head]`` and its bias ``[head, d_head]`` of one layer."""
    attn = model.blocks[layer].attn
    letter = qkv.upper()
    return getattr(attn, f"W_{letter}").detach(), getattr(attn, f"b_{letter}").detach()


@contextlib.contextmanager
def _shifted(model, g: Graph, source: dict[int, Tensor], patches: dict) -> Iterator[None]:
    """Inside the block, each patched receiver's input moves by ``source - current`` of its listed senders, in
    the listed rows: added to the MLP's input or the last residual stream; for a head's q, k or v, that head's
    q (k, v) recomputed through ln1 from the residual stream moved by it. ``current``, the listed senders'
    outputs in the run in progress, is recorded by hooks at their hook points.

    The residual stream a head's input is recomputed from is the one ln1 receives (a forward pre-hook on ln1,
    removed in ``finally``): a hook added at ``hook_resid_pre`` after these, by an intervention entered inside
    ``patch_edges`` (a steer, a splice), runs before ln1 and is seen. With per-head inputs
    (``use_split_qkv_input``), ln1 receives those instead, and the stream is read at ``hook_resid_pre``."""
    current: dict[int, Tensor] = {}
    additive: dict[str, list] = {}
    per_head: dict[tuple[int, str], list] = {}
    for receiver, qkv, layer, _ in g.receivers:
        if (receiver, qkv) not in patches:
            continue
        if receiver == "logits":
            additive.setdefault(f"blocks.{g.n_layers - 1}.hook_resid_post", []).extend(patches[receiver, qkv])
        elif receiver.startswith("m"):
            additive.setdefault(f"blocks.{layer}.hook_mlp_in", []).extend(patches[receiver, qkv])
        else:
            per_head.setdefault((layer, qkv), []).append((_head_of(receiver), patches[receiver, qkv]))
    resid: dict[int, Tensor] = {}

    def deltas(senders: list, like: Tensor) -> dict[tuple, tuple[slice, Tensor]]:
        """The summed shift per group of rows (one group for patch_edges, one per copy for exact patching)."""
        out: dict[tuple, tuple[slice, Tensor]] = {}
        for s, rows in senders:
            key = (rows.start, rows.stop)
            shift = (source[s] - current[s][rows]).to(like.dtype)
            out[key] = (rows, out[key][1] + shift if key in out else shift)
        return out

    def add(name: str):
        def hook(act, hook):
            act = act.clone()
            for rows, shift in deltas(additive[name], act).values():
                act[rows] += shift
            return act
        return hook

    def keep_resid(layer: int):
        def hook(act, hook):
            resid[layer] = act.detach()
        return hook

    def keep_ln1_input(layer: int):
        def hook(module, args):
            if args[0].shape == resid[layer].shape:  # the residual stream, not per-head inputs
                resid[layer] = args[0].detach()
        return hook

    def recompute(layer: int, qkv: str):
        W, _ = _projection(model, layer, qkv)
        affine = ln_affine(model.blocks[layer].ln1)

        def hook(act, hook):  # [batch, pos, head, d_head]
            act = act.clone()
            for head, senders in per_head[layer, qkv]:
                for rows, shift in deltas(senders, act).values():
                    # q + (ln1(x + shift) - ln1(x)) W: exactly q where the shift is 0, which recomputing
                    # ln1(x + shift) W + b from scratch would miss by rounding
                    x = resid[layer][rows]
                    change = layer_norm(x + shift, affine, model.cfg.eps) - layer_norm(x, affine, model.cfg.eps)
                    act[rows, :, head] += (change @ W[head]).to(act.dtype)
            return act
        return hook

    layers = sorted({layer for layer, _ in per_head})
    hooks = _sender_hooks(model, g, current, {s for senders in patches.values() for s, _ in senders})
    hooks += [(f"blocks.{layer}.hook_resid_pre", keep_resid(layer)) for layer in layers]
    hooks += [(f"blocks.{layer}.attn.hook_{qkv}", recompute(layer, qkv)) for layer, qkv in per_head]
    hooks += [(name, add(name)) for name in additive]
    handles = []
    try:
        for layer in layers:
            handles.append(model.blocks[layer].ln1.register_forward_pre_hook(keep_ln1_input(layer)))
        with temporary_hooks(model, hooks):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _sender_outputs(model, tokens: Tensor, parts: bool = False) -> tuple[dict, Tensor]:
    """Every sender's output on ``tokens`` (or, with ``parts``, what the outputs are made of: ``_part_hooks``),
    and the logits, from one forward (the edge hook points must be on)."""
    g = graph(model)
    store: dict = {}
    with torch.no_grad(), temporary_hooks(model, _part_hooks(g, store) if parts else _sender_hooks(model, g, store)):
        logits = model(tokens)
    return store, logits


def _part_hooks(g: Graph, store: dict) -> list:
    """Hooks that record what the senders' outputs are made of in this run, into ``store``: the embeddings
    (``"input"``), each layer's z (``("z", layer)``: a head's output is its z @ W_O) and each MLP's output
    (``("m", layer)``). No per-head matmul in the run; ``_output_deltas`` takes two runs' difference."""
    def keep(key):
        def hook(act, hook):
            store[key] = act.detach()
        return hook

    hooks = [("blocks.0.hook_resid_pre", keep("input"))]
    for layer in range(g.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_z", keep(("z", layer))),
                  (f"blocks.{layer}.hook_mlp_out", keep(("m", layer)))]
    return hooks


def _output_deltas(model, g: Graph, source: dict, base: dict) -> Float[Tensor, "sender batch pos_d"]:
    """Each sender's output in the source run minus its output in the base run (both recorded by
    ``_part_hooks``), sender-major. A layer's heads take one batched matmul: (z_source - z_base) @ W_O, head by
    head, written in place."""
    batch, pos, d_model = source["input"].shape
    like = source["input"]
    out = torch.empty(len(g.senders), batch, pos * d_model, dtype=like.dtype, device=like.device)
    torch.sub(source["input"], base["input"], out=out[0].view(batch, pos, d_model))
    for layer in range(g.n_layers):
        first = g.sender_index[f"a{layer}.h0"]
        diff = einops.rearrange(source["z", layer] - base["z", layer], "b pos head e -> head (b pos) e")
        torch.bmm(diff, model.blocks[layer].attn.W_O.detach().to(diff.dtype),
                  out=out[first:first + g.n_heads].view(g.n_heads, batch * pos, d_model))
        torch.sub(source["m", layer], base["m", layer], out=out[first + g.n_heads].view(batch, pos, d_model))
    return out


def _patched_logits(model, tokens: Tensor, source: dict[int, Tensor],
                    patches: dict[tuple[str, str], list[tuple[int, slice]]]) -> Tensor:
    """Logits of ``tokens`` with each receiver's input shifted by ``source - current`` of the listed senders,
    in the listed rows. ``patches[(receiver, input)] = [(sender index, rows), ...]``, where ``rows`` selects as
    many rows as the source has (all of them, or one copy of the batch); the edge hook points must be on."""
    with torch.no_grad(), _shifted(model, graph(model), source, patches):
        return model(tokens)


def _patches_for(g: Graph, edges: Iterable[Edge], rows: slice = slice(None)) -> dict:
    """``_shifted``'s patches for ``edges`` in ``rows``, each edge once: a second copy would add its shift again."""
    patches: dict[tuple[str, str], list] = {}
    for edge in dict.fromkeys(edges):
        patches.setdefault((edge.receiver, edge.input), []).append((g.sender_index[edge.sender], rows))
    return patches


@contextlib.contextmanager
def patch_edges(model, edges: Sequence[Edge], source_tokens: Int[Tensor, "batch pos"]) -> Iterator[None]:
    """Inside the block, the listed edges carry their sender's output from a run on ``source_tokens``, and
    every other edge the output of the run in progress.

    The source run happens once, on entry; the runs inside must have the source's shape. An edge listed twice
    (two circuits joined with ``+``) is patched once. Exact noising of one edge is the clean run under
    ``patch_edges(model, [edge], corrupted_tokens)``. Path patching (a sender's effect through chosen receivers
    only) is this with those edges: ``[Edge("a0.h0", "a1.h1", "k")]`` patches head 0.0's output where head
    1.1's key reads it, and nowhere else.

    With other interventions, enter this one inside them. A hook entered inside it runs after its own at the
    same hook point: one that edits the residual stream a patched head reads (a steer, a splice at
    ``hook_resid_pre``) is seen, but one that changes a patched edge's sender (``ablate_heads`` on that head, a
    steer at layer 0 for ``input``) is not, and the receiver would move by the sender's output as it was
    before that change.

    Example:
        >>> with patch_edges(model, [Edge("a0.h0", "a1.h1", "k")], corrupted):
        ...     logits = model(clean)
    """
    g = graph(model)
    edges = g.check_edges(edges)
    source_tokens = check_tokens(model, source_tokens)
    with _edge_hooks_on(model):
        source, _ = _sender_outputs(model, source_tokens)

        def same_shape(act, hook):
            if act.shape[:2] != source[0].shape[:2]:
                raise ValueError(f"patch_edges: the run's tokens {tuple(act.shape[:2])} must have the shape of the "
                                 f"source tokens {tuple(source[0].shape[:2])}")

        with temporary_hooks(model, [("blocks.0.hook_resid_pre", same_shape)]), \
                _shifted(model, g, source, _patches_for(g, edges)):
            yield


# ---------------------------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class EdgeScores:
    """One score per edge of ``graph`` (in ``graph.edges`` order): metric(patched) - metric(unpatched), the
    mean over prompt pairs, with a 95% bootstrap interval over pairs when the metric gives one value per pair.
    """

    graph: Graph
    method: str
    direction: str
    steps: int | None  # EAP-IG's Riemann steps
    scores: Float[Tensor, " edge"]
    per_pair: Float[Tensor, "edge pair"] | None  # None when the metric returns a scalar
    clean_metric: float
    corrupted_metric: float

    __repr__ = concise_repr

    @cached_property
    def _interval(self) -> tuple[Tensor, Tensor] | tuple[None, None]:
        return (None, None) if self.per_pair is None else bootstrap_interval(self.per_pair)

    @property
    def ci_low(self) -> Float[Tensor, " edge"] | None:
        """The 95% bootstrap interval's lower end (computed on first use; None for a scalar metric)."""
        return self._interval[0]

    @property
    def ci_high(self) -> Float[Tensor, " edge"] | None:
        return self._interval[1]

    def ranking(self) -> list[int]:
        """Edge indices by |score|, largest first (ties keep graph order)."""
        return sorted(range(len(self.scores)), key=lambda i: -abs(float(self.scores[i])))

    def top(self, n: int = 10) -> list[tuple[Edge, float]]:
        """The ``n`` edges with the largest |score| (every edge when there are fewer), with their scores."""
        n = check_positive_int(n, "n", low=0)
        return [(self.graph.edges[i], float(self.scores[i])) for i in self.ranking()[:n]]

    def circuit(self, n: int) -> tuple[Edge, ...]:
        """The ``n`` edges with the largest |score|."""
        return tuple(edge for edge, _ in self.top(n))

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame({"sender": [e.sender for e in self.graph.edges],
                              "receiver": [e.receiver for e in self.graph.edges],
                              "input": [e.input for e in self.graph.edges], "score": self.scores.tolist()})
        if self.ci_low is not None:
            frame["ci_low"], frame["ci_high"] = self.ci_low.tolist(), self.ci_high.tolist()
        return frame.iloc[self.ranking()].reset_index(drop=True)


def _check_pair(model, clean_tokens, corrupted_tokens) -> None:
    check_tokens(model, clean_tokens)
    check_tokens(model, corrupted_tokens)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean and corrupted tokens must have the same shape, got {tuple(clean_tokens.shape)} "
                         f"and {tuple(corrupted_tokens.shape)}")


def edge_attribution(model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
                     metric: Metric, *, method: str = "eap-ig", direction: str = "noising", steps: int | None = None,
                     edges_per_forward: int | None = None, progress: bool = True) -> EdgeScores:
    """Score every edge of the graph (see the module docstring for the convention and the methods).

    Args:
        clean_tokens, corrupted_tokens: ``[batch, pos]``: a batch of prompt pairs, row by row.
        metric: logits ``[batch, pos, d_vocab]`` -> ``[batch]`` (one value per pair: scores then carry a
            bootstrap interval) or a scalar.
        method: ``"exact"``, ``"eap"`` or ``"eap-ig"``.
        direction: ``"noising"`` (the clean run, edges from the corrupted one) or ``"denoising"``.
        steps: EAP-IG's Riemann midpoints (default 5; for ``"eap-ig"`` only). They run stacked, as many per
            forward and backward as make about 1,024 tokens (``_TOKENS_PER_FORWARD``): faster, and that much
            more memory (5 steps of 8 x 16 tokens in GPT-2 small's shape: the peak RSS 0.5-0.6 GB above a
            forward's, where one step at a time stayed below it).
        edges_per_forward: exact patching: how many edges share one batched forward (default: as many as make
            about 1,024 tokens, ``_edges_per_forward``; for ``"exact"`` only).
        progress: a progress bar, shown once the run has taken 2 s: exact patching in edges (all 32,491 edges
            of GPT-2 small take thousands of forwards), EAP-IG in steps.

    Returns:
        ``EdgeScores``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for name, value, owner in (("steps", steps, "eap-ig"), ("edges_per_forward", edges_per_forward, "exact")):
        if value is not None and method != owner:
            raise ValueError(f"{name} is an option of method={owner!r}, not {method!r}")
    steps = 5 if steps is None else check_positive_int(steps, "steps")
    if edges_per_forward is not None:
        edges_per_forward = check_positive_int(edges_per_forward, "edges_per_forward")
    _check_pair(model, clean_tokens, corrupted_tokens)
    one_per_pair = check_metric(metric, model, *clean_tokens.shape, needs_grad=method != "exact")
    g = graph(model)
    base, source = ((clean_tokens, corrupted_tokens) if direction == "noising" else (corrupted_tokens, clean_tokens))
    with _edge_hooks_on(model):
        if method == "exact":
            chunk = _edges_per_forward(base) if edges_per_forward is None else edges_per_forward
            per_pair, base_value, source_value = _exact(model, g, base, source, metric, chunk, progress=progress)
        else:
            per_pair, base_value, source_value = _gradient_scores(
                model, g, base, source, metric, steps if method == "eap-ig" else None, per_pair=one_per_pair,
                progress=progress)
    clean_value, corrupted_value = ((base_value, source_value) if direction == "noising"
                                    else (source_value, base_value))
    scores, per_pair = (per_pair, None) if per_pair.ndim == 1 else (per_pair.mean(1), per_pair)
    return EdgeScores(g, method, direction, steps if method == "eap-ig" else None, scores, per_pair, clean_value,
                      corrupted_value)


# Tokens per batched forward of exact patching, and per forward and backward of EAP-IG's stacked steps (5 steps of
# 8 x 16 tokens in one took 0.88x the time of one pass per step, 6 paired repetitions, 2026-12-06; logits and
# gradients of about 1,024 tokens are a few hundred MB for GPT-2 small). For exact patching, the batched forward
# stops at the unembedding's input, and each copy is unembedded alone: batched logits ([tokens, d_vocab], 206 MB
# at 1,024 tokens) are past glibc's 32 MB mmap threshold, so each batched forward faulted in fresh pages for them,
# while one copy's (26 MB for 8 x 16 tokens) reuse the last one's memory. The bundled model, whose forward is
# mostly its unembedding, went from 1.21x to 0.96x a forward per edge at 256 tokens. Then, per edge against one
# forward (8 pairs of 16 tokens, a 2-core CPU, paired medians, 2026-12-06): the bundled model 0.97x at 128 tokens,
# 0.83x at 256, 0.75x at 512, 0.69x at 1,024, 0.65x at 2,048; GPT-2 small's shape (32 sampled edges) 1.06x at 128,
# 0.97x at 256, 0.89x at 512, 0.76-0.87x at 1,024 (two runs), 0.83x at 2,048 and 1.14x at 4,096.
_TOKENS_PER_FORWARD = 1024


def _edges_per_forward(tokens: Tensor) -> int:
    return max(1, _TOKENS_PER_FORWARD // tokens.numel())


def _exact(model, g: Graph, base: Tensor, source_tokens: Tensor, metric: Metric, chunk: int,
           edges: Sequence[Edge] | None = None, progress: bool = False) -> tuple[Tensor, float, float]:
    """One forward's work per edge (of ``edges``, default all): copy c of the batch patches edge c of the chunk.
    Returns the scores ``[edge, batch]`` (``[edge]`` for a scalar metric) and the unpatched and source
    metrics. The edge hook points must be on."""
    batch = base.shape[0]
    chosen = g.edges if edges is None else tuple(edges)
    source, source_logits = _sender_outputs(model, source_tokens)
    source_value = float(metric_values(metric, source_logits, _SOURCE_RUN).float().mean())
    with torch.no_grad():
        unpatched = metric_values(metric, model(base), _BASE_RUN).float()
    out = []
    with (progress_bar(len(chosen), unit="edge", desc="exact edge patching", enabled=progress) as bar,
          torch.no_grad()):
        for start in range(0, len(chosen), chunk):
            edges = chosen[start:start + chunk]
            patches: dict[tuple[str, str], list] = {}
            for c, edge in enumerate(edges):
                patches.setdefault((edge.receiver, edge.input), []).append(
                    (g.sender_index[edge.sender], slice(c * batch, (c + 1) * batch)))
            with _shifted(model, g, source, patches):
                final = run_until(model, base.repeat(len(edges), 1), ["unembed.hook_in"])["unembed.hook_in"]
            for c in range(len(edges)):  # the copies' logits one at a time, each in the memory of the last
                value = metric_values(metric, model.unembed(final[c * batch:(c + 1) * batch])).float()
                out.append((value - unpatched).cpu())
            bar.update(len(edges))
    return torch.stack(out), float(unpatched.mean()), source_value


def _ln1_backward(model, layer: int, runs: list[_GradientRun], out: Float[Tensor, "qkv head batch pos_d"]) -> None:
    """Write d metric / d (each head's q, k and v input) into ``out``, from the gradients at hook_q, hook_k and
    hook_v taken back through W_{Q,K,V} and ln1 at the layer's residual stream, summed over the runs.

    LayerNorm's backward, for y = w x_hat + b_ln with x_hat = (x - mean) / sigma and u = w * dL/dy, is
    dL/dx = (u - mean(u) - x_hat mean(u x_hat)) / sigma. Here u = (w W) g for each head's gradient g, so
    (u - mean(u)) / sigma is g / sigma through w W centred over d_model: one batched matmul per input, written
    in place, for all the runs at once. And x_hat (w W) is the head's own q - (b_ln W + b_Q), so
    mean(u x_hat) / sigma = (g / sigma) . (q - b_ln W - b_Q) / d_model needs no matmul: a rank-one correction
    per position and run."""
    w, b_ln = ln_affine(model.blocks[layer].ln1)
    attn = model.blocks[layer].attn
    norms = []  # per run: sigma [batch, pos, 1] and x_hat [(batch pos), d_model]
    for run in runs:
        resid = run.resid[layer]
        centred = resid - resid.mean(-1, keepdim=True)
        sigma = (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
        norms.append((sigma[..., None], (centred / sigma).flatten(0, 1)))
    for i, qkv in enumerate("qkv"):
        grads = [run.grads[f"a{layer}", qkv] / sigma for run, (sigma, _) in zip(runs, norms)]  # [batch, pos, head, e]
        W = getattr(attn, f"W_{qkv.upper()}").detach().to(grads[0].dtype)  # [head, d_model, e]
        offset = getattr(attn, f"b_{qkv.upper()}").detach().to(W.dtype)  # [head, e]
        if w is None:
            centred = W - W.mean(1, keepdim=True)
        else:  # w W centred over d_model, in one pass over W
            scale = w.to(W.dtype)
            offset = offset + einops.einsum(b_ln.to(W.dtype), W, "d, head d e -> head e")
            mean = einops.einsum(scale, W, "d, head d e -> head e") / W.shape[1]
            centred = torch.addcmul(-mean[:, None], W, scale[:, None])
        into = out[i].view(out.shape[1], -1, W.shape[1])  # [head, (batch pos), d_model]
        summed = einops.rearrange(sum(grads), "b pos head e -> head (b pos) e")
        torch.bmm(summed, centred.transpose(1, 2), out=into)
        for run, g, (_, x_hat) in zip(runs, grads, norms):
            along = (g * (run.acts[f"a{layer}", qkv] - offset)).sum(-1) / W.shape[1]  # [batch, pos, head]
            into.addcmul_(einops.rearrange(along, "b pos head -> head (b pos) 1"), x_hat, value=-1)


def _gradient_scores(model, g: Graph, base: Tensor, source_tokens: Tensor, metric: Metric,
                     steps: int | None, per_pair: bool, progress: bool = False) -> tuple[Tensor, float, float]:
    """EAP (``steps`` None: the gradient on the unpatched run) or EAP-IG (the gradient averaged over
    ``steps`` midpoints of the straight line from the unpatched run's embeddings to the source's). Returns
    the scores and the unpatched and source metrics. EAP records the unpatched run's sender outputs in its
    gradient run: one forward with gradients, one backward and the source's forward in all. EAP-IG runs the
    unpatched and source runs as one batch, and its steps in batches of about ``_TOKENS_PER_FORWARD`` tokens
    (all 5 steps of 8 pairs of 16 tokens in one forward and backward)."""
    if steps is None:
        source_parts, source_logits = _sender_outputs(model, source_tokens, parts=True)
        source_value = float(metric_values(metric, source_logits, _SOURCE_RUN).float().mean())
        base_parts: dict = {}
        runs = _gradient_runs(model, g, base, metric, [_BASE_RUN], record=base_parts)
        base_value = float(runs[0].metric.float().mean())
    else:
        both, logits = _sender_outputs(model, torch.cat([base, source_tokens]), parts=True)
        base_parts, source_parts = ({key: value[rows] for key, value in both.items()}
                                    for rows in (slice(None, len(base)), slice(len(base), None)))
        base_logits, source_logits = logits.split(len(base))
        base_value = float(metric_values(metric, base_logits, _BASE_RUN).float().mean())
        source_value = float(metric_values(metric, source_logits, _SOURCE_RUN).float().mean())
        start, end = base_parts["input"], source_parts["input"]
        per_pass = max(1, _TOKENS_PER_FORWARD // base.numel())
        runs = []
        with progress_bar(steps, unit="step", desc="EAP-IG", enabled=progress) as bar:
            for first in range(0, steps, per_pass):
                ks = range(first, min(steps, first + per_pass))
                runs += _gradient_runs(model, g, base.repeat(len(ks), 1), metric,
                                       [f"integrated-gradient step {k + 1} of {steps}" for k in ks],
                                       inputs=torch.cat([start + (k + 0.5) / steps * (end - start) for k in ks]))
                bar.update(len(ks))
    delta = _output_deltas(model, g, source_parts, base_parts)
    scores = _edge_scores(model, g, runs, delta).T.float().cpu()  # [edge, batch]
    if steps is not None:
        scores /= steps
    return (scores if per_pair else scores.sum(1)), base_value, source_value  # a scalar metric: the rows' shares add up to it


class _GradientRun(NamedTuple):
    """One run's d sum(metric) / d (hook_q, hook_k, hook_v, hook_mlp_in and the last resid_post), the residual
    stream before each layer (for ln1's backward), and the metric's values (checked, detached)."""

    grads: dict[tuple[str, str], Tensor]
    acts: dict[tuple[str, str], Tensor]
    resid: dict[int, Tensor]
    metric: Tensor


def _gradient_runs(model, g: Graph, tokens: Tensor, metric: Metric, runs: Sequence[str],
                   inputs: Tensor | None = None, record: dict | None = None) -> list[_GradientRun]:
    """One forward and backward of ``len(runs)`` runs stacked in one batch (``tokens`` is ``[runs · batch,
    pos]``), split back into one ``_GradientRun`` per run (views). ``inputs`` replace the embeddings
    (``blocks.0.hook_resid_pre``). The metric is taken on each run's logits (named ``runs[i]`` in its errors)
    and summed: each pair of each run gets its own gradient; the mean over pairs is taken later. ``record``
    receives what this run's sender outputs are made of (``_part_hooks``; one run only)."""
    kept: dict[tuple[str, str], Tensor] = {}
    resid: dict[int, Tensor] = {}

    def start(act, hook):  # a leaf, so the graph exists though no parameter requires grad
        return (act if inputs is None else inputs).detach().to(act.dtype).requires_grad_(True)

    def keep_resid(layer: int):
        def hook(act, hook):
            resid[layer] = act.detach()
        return hook

    def keep(key: tuple[str, str]):
        def hook(act, hook):
            act = act.clone()  # its own node: the gradient of this receiver alone
            kept[key] = act
            return act
        return hook

    hooks = [("blocks.0.hook_resid_pre", start)]
    for layer in range(g.n_layers):
        hooks.append((f"blocks.{layer}.hook_resid_pre", keep_resid(layer)))
        hooks += [(f"blocks.{layer}.attn.hook_{qkv}", keep((f"a{layer}", qkv))) for qkv in "qkv"]
        hooks.append((f"blocks.{layer}.hook_mlp_in", keep((f"m{layer}", ""))))
    hooks.append((f"blocks.{g.n_layers - 1}.hook_resid_post", keep(("logits", ""))))
    if record is not None:  # after the leaf at resid_pre, so the input sender is read as the run has it
        hooks += _part_hooks(g, record)
    with torch.enable_grad():  # the metric too, if the caller is under no_grad
        logits = logits_for_gradients(model, tokens, hooks)
        keys = list(kept)
        values = [metric_values(metric, part, run) for part, run in zip(logits.split(len(tokens) // len(runs)), runs)]
        found = torch.autograd.grad(sum(value.sum() for value in values), [kept[k] for k in keys], allow_unused=True)

    def per_run(t: Tensor) -> tuple[Tensor, ...]:
        return t.detach().unflatten(0, (len(runs), -1)).unbind(0)

    grads = {k: per_run(torch.zeros_like(kept[k]) if grad is None else grad) for k, grad in zip(keys, found)}
    acts = {k: per_run(kept[k]) for k in keys}
    resid_of = {layer: per_run(act) for layer, act in resid.items()}
    return [_GradientRun({k: grads[k][i] for k in keys}, {k: acts[k][i] for k in keys},
                         {layer: resid_of[layer][i] for layer in resid}, values[i].detach()) for i in range(len(runs))]


def _edge_scores(model, g: Graph, runs: list[_GradientRun], delta: Float[Tensor, "sender batch pos_d"]
                 ) -> Float[Tensor, "batch edge"]:
    """(source - base) . d sum(metric) / d (receiver input), summed over pos, d_model and the runs, per edge
    and pair, in graph.edges order.

    Layer by layer: the gradients at the layer's receivers (a head's q, k or v input reached through ln1 once
    for all the runs, ``_ln1_backward``) go into one reused buffer, then one batched matmul [batch, upstream
    senders, pos·d_model] @ [batch, pos·d_model, the layer's receivers] scores every pair of them."""
    _, batch, flat = delta.shape
    by_pair = delta.transpose(0, 1)  # [batch, sender, pos·d_model], a view
    heads = g.n_heads
    receivers = torch.empty(3 * heads + 1, batch, flat, dtype=delta.dtype, device=delta.device)  # q, k, v heads; MLP
    column = [qkv * heads + head for head in range(heads) for qkv in range(3)] + [3 * heads]  # graph order -> row

    def summed(key: tuple[str, str]) -> Tensor:  # [batch, pos·d_model]
        return sum(run.grads[key] for run in runs).flatten(1)

    scores, first = [], 0
    for layer in range(g.n_layers):
        _ln1_backward(model, layer, runs, receivers[:-1].view(3, heads, batch, flat))
        receivers[-1] = summed((f"m{layer}", ""))
        upstream = [n for _, _, _, n in g.receivers[first:first + len(receivers)]]
        pairs = torch.bmm(by_pair[:, :upstream[-1]], receivers.permute(1, 2, 0))  # [batch, sender, receiver row]
        scores += [pairs[:, :n, column[r]] for r, n in enumerate(upstream)]
        first += len(receivers)
    scores.append(torch.bmm(by_pair, summed(("logits", ""))[:, :, None])[:, :, 0])
    return torch.cat(scores, dim=1)


# ---------------------------------------------------------------------------------------------- faithfulness


def faithfulness(model, circuit: Sequence[Edge], clean_tokens: Int[Tensor, "batch pos"],
                 corrupted_tokens: Int[Tensor, "batch pos"], metric: Metric) -> float:
    """How much of the behaviour the circuit alone carries: the clean run with every edge *outside* the
    circuit carrying the corrupted run's sender output, and the circuit's edges the output recomputed in this
    run (as the EAP-IG code evaluates a graph). Returns (metric - corrupted) / (clean - corrupted): 1 with
    every edge in the circuit, 0 with none."""
    _check_pair(model, clean_tokens, corrupted_tokens)
    check_metric(metric, model, *clean_tokens.shape)
    g = graph(model)
    return _faithfulness(model, g, [set(g.check_edges(circuit))], clean_tokens, corrupted_tokens, metric)[0]


def _faithfulness(model, g: Graph, circuits: list[set], clean_tokens, corrupted_tokens, metric) -> list[float]:
    """Faithfulness of each circuit; the clean run, the corrupted run and its sender outputs are run once."""
    with _edge_hooks_on(model), torch.no_grad():
        clean = float(metric_values(metric, model(clean_tokens), "the clean run").mean())
        source, corrupted_logits = _sender_outputs(model, corrupted_tokens)
        corrupted = float(metric_values(metric, corrupted_logits, "the corrupted run").mean())
        if math.isclose(clean, corrupted, rel_tol=0, abs_tol=1e-12):
            raise ValueError(f"the clean and corrupted metrics are equal ({clean:.6g}): faithfulness is undefined")
        values = []
        for inside in circuits:
            outside = [edge for edge in g.edges if edge not in inside]
            logits = _patched_logits(model, clean_tokens, source, _patches_for(g, outside))
            values.append((float(metric_values(metric, logits).mean()) - corrupted) / (clean - corrupted))
    return values


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Faithfulness of the top-n circuits of a ranking, n a fraction of all edges (``CIRCUIT_FRACTIONS``)."""

    fractions: tuple[float, ...]
    sizes: tuple[int, ...]
    values: tuple[float, ...]

    __repr__ = concise_repr

    @property
    def area(self) -> float:
        """The area under the curve over fractions 0..1 (trapezoids): 1 for a ranking whose every circuit is
        fully faithful, as MIB compares methods."""
        return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in
                   zip(self.fractions, self.fractions[1:], self.values, self.values[1:]))

    def to_frame(self):
        """One row per circuit: the fraction of edges asked for, the edges kept, and the faithfulness."""
        import pandas as pd

        return pd.DataFrame({"fraction": self.fractions, "edges": self.sizes, "faithfulness": self.values})


def faithfulness_curve(model, scores: EdgeScores | Sequence[Edge], clean_tokens, corrupted_tokens,
                       metric: Metric, *, fractions: Sequence[float] = CIRCUIT_FRACTIONS) -> FaithfulnessCurve:
    """Faithfulness of the top ``round(f * edges)`` edges of ``scores`` (or of a ranked list of every edge),
    per f; ``fractions`` increase within 0..1."""
    _check_pair(model, clean_tokens, corrupted_tokens)
    check_metric(metric, model, *clean_tokens.shape)
    fractions = tuple(fractions)
    if not fractions or not all(isinstance(f, float | int) and 0 <= f <= 1 for f in fractions) or \
            any(a >= b for a, b in itertools.pairwise(fractions)):
        raise ValueError(f"fractions must increase within 0..1, e.g. {CIRCUIT_FRACTIONS[:4]}, got {fractions}")
    g = graph(model)
    if isinstance(scores, EdgeScores) and scores.graph != g:
        raise ValueError(f"the scores are of another model's graph ({scores.graph.n_layers} layers x "
                         f"{scores.graph.n_heads} heads; this one has {g.n_layers} x {g.n_heads})")
    ranked = (list(scores.circuit(len(g.edges))) if isinstance(scores, EdgeScores) else list(g.check_edges(scores)))
    if len(ranked) != len(g.edges) or len(set(ranked)) != len(ranked):  # else a size would not be the circuit's
        raise ValueError(f"a ranking names each of the graph's {len(g.edges)} edges once; got {len(ranked)} edges, "
                         f"{len(set(ranked))} of them distinct")
    sizes = tuple(round(f * len(g.edges)) for f in fractions)
    values = _faithfulness(model, g, [set(ranked[:n]) for n in sizes], clean_tokens, corrupted_tokens, metric)
    return FaithfulnessCurve(fractions, sizes, tuple(values))
