"""Sparse autoencoders (SAEs) on one hook's activations: load and save them in SAELens's format, train them
on a harvest or straight from tokens (one process or many, under ``torchrun``), measure them, and splice them
into the model.

- **Architectures** (``architecture``): ``"standard"`` (ReLU), ``"topk"`` (the k largest pre-activations,
  then ReLU) and ``"jumprelu"`` (ReLU where the pre-activation is above a per-latent ``threshold``), each as
  SAELens 6 computes it: ``pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``, features from ``pre``,
  ``decode(f) = f @ W_dec + b_dec``.
- **On disk**, SAELens's format: ``cfg.json`` as ``SAEConfig.to_dict()`` writes it (``architecture``, ``d_in``,
  ``d_sae``, ``k`` for TopK, ``apply_b_dec_to_input``, ``normalize_activations``, ``hook_name`` inside
  ``metadata``) and ``sae_weights.safetensors`` with ``W_enc`` ``[d_in, d_sae]``, ``b_enc``, ``W_dec`` ``[d_sae,
  d_in]``, ``b_dec`` and, for JumpReLU, ``threshold``. SAELens's pre-6 configs (``hook_point``, ``activation_fn``)
  load too. Activation normalisation other than ``"none"`` is refused (``SAEFormatError``), never ignored.
- **Splicing** (``splice``, ``ablate_features``, ``steer_features``): context managers whose hooks go through
  ``interp.hooks.temporary_hooks`` (removed in ``finally``; they reach ``generate``). With ``with_error=True``
  the activation becomes ``x + (decode(f') - decode(f))``: exactly ``x`` when the features are not edited, so
  an edit acts alone.

Example:
    >>> sae = interp.sae.load("path/to/sae")               # a folder with cfg.json and sae_weights.safetensors
    >>> interp.sae.evaluate(model, sae, tokens)            # L0, explained variance, CE-loss score, ...
    >>> with interp.sae.steer_features(model, sae, {123: 8.0}):
    ...     generate(model, "The weather today", temperature=0).texts
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from interp import distributed
from interp._progress import progress_bar
from interp._repr import concise_repr
from interp.errors import SAEFormatError
from interp.figures import atomic_write
from interp.harvest import Harvest, Stream
from interp.hooks import check_hook_names, logits_for_gradients, temporary_hooks
from interp.inputs import (
    check_finite,
    check_flag,
    check_folder,
    check_gradients_on,
    check_index,
    check_positive_int,
    check_tokens,
)
from interp.interventions import activation_tail
from interp.loading import PROCESSING_STEPS, check_device, processing_moves

__all__ = ["ARCHITECTURES", "SAE", "SAEMetrics", "ablate_features", "evaluate", "feature_attribution", "load",
           "logit_effects", "save", "splice", "steer_features", "train"]

ARCHITECTURES = ("standard", "topk", "jumprelu")
# The architectures each architecture-specific option of ``train`` acts on (the others refuse it).
_OPTION_OF = {"k": ("topk",), "l1": ("standard",), "l0": ("jumprelu",), "bandwidth": ("jumprelu",),
              "aux_k": ("standard", "topk")}
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
SAE_LENS_VERSION = "6.54.0"  # the format version written into metadata (what SAELens reads back)


class SAE(nn.Module):
    """A sparse autoencoder: ``encode`` ``[..., d_in] -> [..., d_sae]``, ``decode`` back, ``forward`` both.

    ``hook_name`` is the TransformerLens hook it reads (``blocks.1.hook_resid_pre``); for a hook whose
    activation has several axes after ``[batch, pos]`` (``hook_z``: ``[head, d_head]``) the SAE reads them
    flattened, as SAELens's ``reshape_activations="hook_z"`` does.
    """

    def __init__(self, d_in: int, d_sae: int, *, hook_name: str, architecture: str = "topk", k: int | None = None,
                 apply_b_dec_to_input: bool = True, rescale_acts_by_decoder_norm: bool = False,
                 metadata: Mapping | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise SAEFormatError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        d_in, d_sae = check_positive_int(d_in, "d_in"), check_positive_int(d_sae, "d_sae")
        if architecture == "topk":
            k = check_positive_int(k, "k", high=d_sae)
        elif k is not None:
            raise SAEFormatError(f"k is for architecture 'topk', not {architecture!r}")
        if rescale_acts_by_decoder_norm and architecture != "topk":
            raise SAEFormatError("rescale_acts_by_decoder_norm is a TopK option")
        self.d_in, self.d_sae, self.hook_name, self.architecture, self.k = d_in, d_sae, hook_name, architecture, k
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm)
        self.metadata = dict(metadata or {})
        like = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **like))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **like))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **like))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **like))
        self.threshold = nn.Parameter(torch.zeros(d_sae, **like)) if architecture == "jumprelu" else None

    def __repr__(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"SAE({self.architecture}{k}, {self.d_in} -> {self.d_sae} latents, at {self.hook_name})"

    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        if x.shape[-1:] != (self.d_in,):
            raise ValueError(f"this SAE reads vectors of d_in = {self.d_in} ({self.hook_name}), got shape "
                             f"{tuple(x.shape)}")
        x = x.to(self.W_enc.dtype)
        centred = (x - self.b_dec) if self.apply_b_dec_to_input else x
        pre = (centred.reshape(-1, self.d_in) @ self.W_enc).add_(self.b_enc).view(*x.shape[:-1], self.d_sae)
        return pre * self.W_dec.norm(dim=-1) if self.rescale_acts_by_decoder_norm else pre

    def activation(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        if self.architecture == "standard":
            return pre.relu()
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold).to(pre.dtype)
        values, indices = _top_k(pre, self.k)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return self.activation(self.pre_acts(x))

    def decode(self, features: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        if features.shape[-1:] != (self.d_sae,):
            raise ValueError(f"this SAE has d_sae = {self.d_sae} latents, got features of shape "
                             f"{tuple(features.shape)}")
        features = features.to(self.W_dec.dtype)  # as encode takes its input, whatever the caller's dtype
        if self.rescale_acts_by_decoder_norm:
            features = features / self.W_dec.norm(dim=-1)
        return features @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """``decode(encode(x))``; for TopK, the k active decoder rows are summed by one ``embedding_bag``
        instead of a dense ``[..., d_sae] @ W_dec`` (the same up to float rounding, and d_sae / k times less
        work)."""
        if self.architecture != "topk" or self.rescale_acts_by_decoder_norm:
            return self.decode(self.encode(x))
        values, indices = _top_k(self.pre_acts(x), self.k)
        x_hat = F.embedding_bag(indices.reshape(-1, self.k), self.W_dec, mode="sum",
                                per_sample_weights=values.relu().reshape(-1, self.k))
        return (x_hat + self.b_dec).view(*x.shape[:-1], self.d_in)

    def config(self) -> dict:
        """``cfg.json`` as SAELens 6's ``SAEConfig.to_dict()`` writes it."""
        cfg = {"d_in": self.d_in, "d_sae": self.d_sae, "dtype": str(self.W_enc.dtype).removeprefix("torch."),
               "device": "cpu", "apply_b_dec_to_input": self.apply_b_dec_to_input, "normalize_activations": "none",
               "reshape_activations": "hook_z" if self.hook_name.endswith("hook_z") else "none",
               "metadata": {"sae_lens_version": SAE_LENS_VERSION, "sae_lens_training_version": SAE_LENS_VERSION,
                            **self.metadata, "hook_name": self.hook_name},
               "architecture": self.architecture}
        if self.architecture == "topk":
            cfg |= {"k": self.k, "rescale_acts_by_decoder_norm": self.rescale_acts_by_decoder_norm}
        return cfg


@functools.lru_cache(maxsize=64)
def _block_count(d: int, k: int) -> int:
    """The largest divisor of ``d`` that is at most ``sqrt(k * d)``: ``_top_k``'s number of blocks."""
    return next(b for b in range(math.isqrt(k * d), 0, -1) if d % b == 0)


def _top_k(pre: Float[Tensor, "... d_sae"], k: int) -> tuple[Float[Tensor, "... k"], Int[Tensor, "... k"]]:
    """``pre.topk(k, dim=-1, sorted=False)``, in about half the time on CPU when k is much less than d_sae.

    The latents are split into ``n`` strided blocks (latent ``g * n + j`` in block ``j``, ``n`` near
    ``sqrt(k * d_sae)``). The k blocks with the largest maxima hold the k largest values: a value outside them
    is at most its own block's maximum, which is at most each of the k chosen maxima. So ``torch.topk`` runs
    on the block maxima, then on those k blocks' values only. The values are ``torch.topk``'s; among exact
    ties the indices may differ, which ``torch.topk`` leaves unspecified too.
    """
    d = pre.shape[-1]
    n = _block_count(d, k)
    if n <= k:  # no block to skip
        return pre.topk(k, dim=-1, sorted=False)
    blocks = pre.reshape(-1, d // n, n)  # [rows, d / n, n]: latent g * n + j at [:, g, j]
    best = blocks.amax(1).topk(k, dim=-1, sorted=False).indices  # [rows, k]
    chosen = blocks.gather(-1, best[:, None, :].expand(-1, d // n, k)).flatten(1)  # [rows, d / n * k]
    values, where = chosen.topk(k, dim=-1, sorted=False)
    indices = where // k * n + best.gather(-1, where % k)
    return values.view(*pre.shape[:-1], k), indices.view(*pre.shape[:-1], k)


# ---------------------------------------------------------------------------------------------- files


def save(sae: SAE, path: str | os.PathLike) -> Path:
    """Write ``sae`` to the folder ``path`` in SAELens's format (each file through a temporary name, so a
    reader never sees half of one). Returns the folder."""
    from safetensors.torch import save as to_bytes

    path = check_folder(path, "an SAE's weights and config")
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.named_parameters()}
    atomic_write(path / WEIGHTS_FILE, to_bytes(tensors))
    atomic_write(path / CFG_FILE, json.dumps(sae.config(), indent=1) + "\n")
    return path


def _from_config(cfg: dict, where: Path) -> dict:
    """The constructor's arguments from a SAELens 6 (or pre-6) ``cfg.json``."""
    metadata = dict(cfg.get("metadata") or {})
    hook_name = metadata.pop("hook_name", None) or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook_name:
        raise SAEFormatError(f"{where / CFG_FILE} names no hook (metadata.hook_name)")
    architecture = cfg.get("architecture", "standard")
    k = cfg.get("k")
    if "architecture" not in cfg and cfg.get("activation_fn", cfg.get("activation_fn_str", "relu")) == "topk":
        architecture, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k")  # SAELens before 6
    if architecture not in ARCHITECTURES:
        raise SAEFormatError(f"{where / CFG_FILE}: architecture {architecture!r} is not one interp reads "
                             f"({', '.join(ARCHITECTURES)})")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise SAEFormatError(f"{where / CFG_FILE}: normalize_activations={norm!r} is not supported (only 'none'); "
                             "fold the scaling into the weights first (SAELens: fold_activation_norm_scaling_factor)")
    missing = [key for key in ("d_in", "d_sae") if key not in cfg]
    if missing:
        raise SAEFormatError(f"{where / CFG_FILE} lacks {', '.join(missing)}")
    return dict(d_in=cfg["d_in"], d_sae=cfg["d_sae"], hook_name=hook_name, architecture=architecture,
                k=k if architecture == "topk" else None,
                apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
                rescale_acts_by_decoder_norm=cfg.get("rescale_acts_by_decoder_norm", False), metadata=metadata)


BUNDLED = Path(__file__).resolve().parent / "bundled" / "sae"  # the bundled model's SAE (SAE_CARD.md there)


def load(path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype | None = None) -> SAE:
    """Read a SAE folder in SAELens's format (``cfg.json`` and ``sae_weights.safetensors``); ``"bundled"``
    is the SAE that ships for the bundled model (``blocks.1.hook_resid_pre``, see its ``SAE_CARD.md``).

    Raises ``SAEFormatError`` (a ``ValueError``) naming what is wrong: a missing file or tensor, a tensor of
    the wrong shape, an architecture or normalisation it does not read; ``FileNotFoundError`` for no folder.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = BUNDLED if str(path) == "bundled" else Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no SAE folder at {str(path)!r}")
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise SAEFormatError(f"{path} has no {name}: a SAELens SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    try:
        cfg = json.loads((path / CFG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise SAEFormatError(f"{path / CFG_FILE} is not JSON: {e}") from None
    try:
        tensors = load_file(path / WEIGHTS_FILE)
    except SafetensorError as e:
        raise SAEFormatError(f"{path / WEIGHTS_FILE} is not a readable safetensors file: {e}") from None
    args = _from_config(cfg, path)
    stored = tensors["W_enc"].dtype if "W_enc" in tensors else torch.float32
    sae = SAE(**args, dtype=dtype or stored, device=device)
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise SAEFormatError(f"{path / WEIGHTS_FILE} lacks {', '.join(missing)} (a {sae.architecture} SAE has "
                             f"{', '.join(expected)})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise SAEFormatError(f"{path / WEIGHTS_FILE}: {name} is {tuple(tensors[name].shape)}, but d_in="
                                 f"{sae.d_in} and d_sae={sae.d_sae} in {CFG_FILE} make it {shape}")
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(tensors[name])
    return sae


def check_sae(model, sae: SAE, hook: str | None = None) -> str:
    """The hook ``sae`` reads in ``model`` (``hook`` or its own ``hook_name``), checked before any forward:
    the hook exists, its activation's size is the SAE's ``d_in`` (where the hook's shape is known), and, when
    the SAE says which weight processing its model had (``metadata["model_from_pretrained_kwargs"]``, as
    SAELens writes it), ``model`` has the same where it moves this hook's activations."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be an interp.sae.SAE (interp.sae.load reads SAELens folders), got "
                        f"{type(sae).__name__}")
    _check_device(model, sae)
    hook = sae.hook_name if hook is None else hook
    try:
        check_hook_names(model, [hook])
    except (KeyError, ValueError) as e:
        raise SAEFormatError(f"the SAE's hook {hook!r} is not in this model: {e}") from None
    tail = activation_tail(model, hook)
    if tail is not None and math.prod(tail) != sae.d_in:
        raise SAEFormatError(f"the SAE reads d_in={sae.d_in}, but {hook} gives {math.prod(tail)} per token "
                             f"({' x '.join(map(str, tail))})")
    # SAELens loads an SAE's model with from_pretrained_no_processing plus the steps in its metadata's
    # model_from_pretrained_kwargs, for training and evaluation alike.
    kwargs = sae.metadata.get("model_from_pretrained_kwargs")
    info = getattr(model, "interp_info", None)
    if isinstance(kwargs, Mapping) and info is not None:  # otherwise unknown: nothing to compare
        for step in PROCESSING_STEPS:
            wanted = bool(kwargs.get(step, False))
            if wanted != (step in info.processing) and processing_moves(step, hook):
                raise SAEFormatError(
                    f"the SAE was trained on a model with {step}={wanted} (its metadata's model_from_pretrained_kwargs)"
                    f", which changes {hook}; this model has {step}={not wanted}: load it with "
                    f"interp.load_model(..., {step}={wanted})")
    return hook


def _check_device(model, sae: SAE) -> None:
    model_device, sae_device = next(model.parameters()).device, sae.W_enc.device
    if model_device != sae_device:
        raise ValueError(f"the SAE is on {sae_device} and the model on {model_device}: move the SAE with "
                         f"sae.to({str(model_device)!r}), or load it with interp.sae.load(path, device=...)")


def _processing_kwargs(processing: Sequence[str]) -> dict[str, bool]:
    """SAELens's ``model_from_pretrained_kwargs`` (steps on top of no processing) for a model with ``processing``."""
    return {step: step in processing for step in PROCESSING_STEPS}


# ---------------------------------------------------------------------------------------------- splicing


Edit = Callable[[Tensor], Tensor]


@contextlib.contextmanager
def splice(model, sae: SAE, hook: str | None = None, *, with_error: bool = False, keep_first: bool = True,
           edit: Edit | None = None) -> Iterator[None]:
    """Inside the block, the activation at the SAE's hook is replaced by its reconstruction.

    Args:
        hook: where (default ``sae.hook_name``).
        with_error: keep the reconstruction error: the activation becomes ``x + (decode(f') - decode(f))``
            (``f`` the features, ``f'`` edited), exactly ``x`` when nothing is edited, so that an edit acts
            alone. (``x_hat + (x - x_hat)`` would not be ``x`` in float32 for a few percent of the elements.)
        keep_first: position 0 (GPT-2's BOS, whose residual is far out of any SAE's training distribution)
            keeps the model's own activation, as SAELens's evaluation does. Under ``generate`` the hooked model
            runs on the whole sequence, so position 0 is the prompt's first token at every step.
        edit: ``features [batch, pos, d_sae] -> features``, applied before decoding.

    Example:
        >>> with splice(model, sae):
        ...     loss = model(tokens, return_type="loss")
    """
    hook = check_sae(model, sae, hook)
    check_flag(with_error, "with_error")
    first = 1 if check_flag(keep_first, "keep_first") else 0

    def fn(act, hook):
        if with_error and edit is None:
            return act  # x + (decode(f) - decode(f)) is x
        x = act[:, first:].flatten(2)  # [batch, pos, d_in]
        if edit is None:
            new = sae(x)
        else:
            features = sae.encode(x)
            edited = sae.decode(edit(features))
            new = x + (edited - sae.decode(features)).to(x.dtype) if with_error else edited
        new = new.to(act.dtype).reshape(act.shape[0], act.shape[1] - first, *act.shape[2:])
        return torch.cat([act[:, :first], new], dim=1)

    with temporary_hooks(model, [(hook, fn)]):
        yield


def _check_features(sae: SAE, features) -> list[int]:
    if isinstance(features, str | numbers.Number) or (isinstance(features, Tensor) and features.ndim == 0) or \
            not isinstance(features, Iterable):
        raise TypeError(f"features must be a list of latent indices, e.g. [123], got {features!r}")
    out = [check_index(f, "feature") for f in features]
    bad = [f for f in out if not 0 <= f < sae.d_sae]
    if bad:
        raise ValueError(f"features {bad} are outside 0..{sae.d_sae - 1}")
    return out


@contextlib.contextmanager
def ablate_features(model, sae: SAE, features: Sequence[int], *, with_error: bool = True,
                    keep_first: bool = True) -> Iterator[None]:
    """Inside the block, the listed features are zero at every position (with the reconstruction error kept
    by default, so only the ablation changes the model)."""
    chosen = _check_features(sae, features)
    if not chosen:
        raise ValueError("features is empty: name at least one latent to ablate, e.g. [123]")

    def edit(f):
        f = f.clone()
        f[..., chosen] = 0
        return f

    with splice(model, sae, with_error=with_error, keep_first=keep_first, edit=edit):
        yield


@contextlib.contextmanager
def steer_features(model, sae: SAE, values: Mapping[int, float], *, mode: str = "add", with_error: bool = True,
                   keep_first: bool = True) -> Iterator[None]:
    """Inside the block, each listed feature gets ``value`` added (``mode="add"``: the activation moves by
    ``value * W_dec[feature]``) or is set to it (``mode="set"``), at every position.

    Example:
        >>> with steer_features(model, sae, {123: 8.0}):
        ...     generate(model, "The weather", temperature=0).texts
    """
    if mode not in ("add", "set"):
        raise ValueError(f"mode must be 'add' or 'set', got {mode!r}")
    if not isinstance(values, Mapping):
        raise TypeError(f"values must map latent indices to amounts, e.g. {{123: 8.0}}, got {type(values).__name__}")
    if not values:
        raise ValueError("values is empty: name at least one feature, e.g. {123: 8.0}")
    chosen = _check_features(sae, values)
    amounts = [float(check_finite(float(v), "a steering value")) for v in values.values()]

    def edit(f):
        f = f.clone()
        amount = torch.tensor(amounts, dtype=f.dtype, device=f.device)
        f[..., chosen] = f[..., chosen] + amount if mode == "add" else amount.expand_as(f[..., chosen])
        return f

    with splice(model, sae, with_error=with_error, keep_first=keep_first, edit=edit):
        yield


# ---------------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class SAEMetrics:
    """What ``evaluate`` measured, on held-out tokens: every position but the first of each row (its BOS),
    as SAELens's ``run_evals`` measures, which leaves out the positions that hold a special token. SAELens also
    leaves out a 50256 inside a row (a document boundary in packed text); on rows without one, ``l0``,
    ``explained_variance``, ``mse``, ``ce_clean``, ``ce_spliced`` and ``kl_spliced`` are SAELens's (tested).

    - ``l0``: features above zero per token, averaged over tokens.
    - ``explained_variance``: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, sums over tokens, the mean over
      the held-out tokens.
    - ``mse``: ||x - x_hat||^2 summed over dimensions, averaged over tokens (SAELens's convention, and the
      ``mse`` that ``train`` reports).
    - ``ce_loss_score``: (CE zero-ablated - CE spliced) / (CE zero-ablated - CE clean); CE is the mean
      next-token loss over the positions that have a next token. The splice and the zero ablation both leave
      position 0 alone (SAELens's zero ablation zeroes it too, so its CE zero-ablated and score differ).
    - ``kl_score``: (KL zero-ablated - KL spliced) / KL zero-ablated, KL(clean || run) of the next-token
      distributions, averaged over positions.
    - ``dead_fraction``: latents that never fire on these tokens; ``dense_fraction``: latents that fire on more
      than 10% of them.
    """

    tokens: int
    l0: float
    explained_variance: float
    mse: float
    ce_clean: float
    ce_spliced: float
    ce_zero_ablated: float
    ce_loss_score: float
    kl_spliced: float
    kl_zero_ablated: float
    kl_score: float
    dead_fraction: float
    dense_fraction: float

    __repr__ = concise_repr

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(model, sae: SAE, tokens: Int[Tensor, "batch pos"], *, batch_size: int = 8,
             progress: bool = True) -> SAEMetrics:
    """Measure ``sae`` on held-out ``tokens`` (rows that start with BOS; see ``SAEMetrics`` for each definition,
    chosen to compare with SAELens's), three forwards per batch of rows; a progress bar in rows once it has
    taken 2 s (``progress=False`` hides it)."""
    tokens = check_tokens(model, tokens)
    hook = check_sae(model, sae)
    batch_size = check_positive_int(batch_size, "batch_size")
    if tokens.shape[1] < 3:
        raise ValueError("evaluate needs rows of at least 3 tokens (position 0 is left alone, and the loss needs "
                         "a next token)")
    sums = {key: 0.0 for key in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero", "n_pred")}
    n_tok, l0_sum, sq_err, x_sum, x_sq = 0, 0.0, 0.0, None, 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    kept: dict[str, Tensor] = {}

    def keep(act, hook):
        kept["x"] = act[:, 1:].flatten(2).detach()

    def zero(act, hook):  # position 0 left alone, as in the splice
        out = act.clone()
        out[:, 1:] = 0
        return out

    with progress_bar(len(tokens), unit="row", desc="evaluate SAE", enabled=progress) as bar:
        for start in range(0, len(tokens), batch_size):
            rows = tokens[start:start + batch_size]
            with temporary_hooks(model, [(hook, keep)]):
                clean = model(rows)
            with splice(model, sae):
                spliced = model(rows)
            with temporary_hooks(model, [(hook, zero)]):
                zeroed = model(rows)
            targets = rows[:, 2:].flatten()  # what positions 1 .. pos - 2 predict
            clean_logprobs = clean[:, 1:].float().log_softmax(-1)  # [batch, position 1 on, d_vocab]
            sums["ce_clean"] += float(F.nll_loss(clean_logprobs[:, :-1].flatten(0, 1), targets, reduction="sum"))
            for key, logits in (("spliced", spliced), ("zero", zeroed)):
                logprobs = logits[:, 1:].float().log_softmax(-1)
                sums[f"ce_{key}"] += float(F.nll_loss(logprobs[:, :-1].flatten(0, 1), targets, reduction="sum"))
                sums[f"kl_{key}"] += float(F.kl_div(logprobs, clean_logprobs, reduction="sum", log_target=True))
            sums["n_pred"] += len(targets)
            x = kept["x"].reshape(-1, sae.d_in).double()
            features = sae.encode(kept["x"].reshape(-1, sae.d_in))
            x_hat = sae.decode(features).double()
            active = features > 0
            l0_sum += float(active.sum())
            fired += active.sum(0).double().cpu()
            sq_err += float((x - x_hat).pow(2).sum())
            x_sum = x.sum(0) if x_sum is None else x_sum + x.sum(0)
            x_sq += float(x.pow(2).sum())
            n_tok += len(x)
            bar.update(len(rows))
    total_var = x_sq - float(x_sum.pow(2).sum()) / n_tok  # sum ||x - mean||^2
    ce = {key: sums[f"ce_{key}"] / sums["n_pred"] for key in ("clean", "spliced", "zero")}
    kl = {key: sums[f"kl_{key}"] / n_tok for key in ("spliced", "zero")}
    frequency = fired / n_tok
    return SAEMetrics(
        tokens=n_tok, l0=l0_sum / n_tok, explained_variance=1 - sq_err / total_var, mse=sq_err / n_tok,
        ce_clean=ce["clean"], ce_spliced=ce["spliced"], ce_zero_ablated=ce["zero"],
        ce_loss_score=(ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["clean"]),
        kl_spliced=kl["spliced"], kl_zero_ablated=kl["zero"], kl_score=(kl["zero"] - kl["spliced"]) / kl["zero"],
        dead_fraction=float((fired == 0).double().mean()), dense_fraction=float((frequency > 0.1).double().mean()))


def feature_attribution(model, sae: SAE, tokens: Int[Tensor, "batch pos"], metric) -> Float[Tensor, "batch pos d_sae"]:
    """Each feature's gradient x activation effect on ``metric`` (logits -> ``[batch]`` or a scalar, summed), per
    position: the first-order change in the metric if that feature were zero there, with the SAE spliced in
    with its error (so the model's output is its own)."""
    from interp.metrics import check_metric, metric_values

    tokens = check_tokens(model, tokens)
    hook = check_sae(model, sae)
    check_metric(metric, model, *tokens.shape, needs_grad=True)
    kept: dict[str, Tensor] = {}

    def fn(act, hook):
        x = act.flatten(2)
        features = sae.encode(x).detach().requires_grad_(True)
        kept["f"] = features
        decoded = sae.decode(features)
        # x + 0 with the decoder's gradient: exactly x (x + d - d is not, for about a third of the elements)
        return (x + (decoded - decoded.detach())).reshape(act.shape).to(act.dtype)

    with torch.enable_grad():  # the metric too, if the caller is under no_grad
        value = metric_values(metric, logits_for_gradients(model, tokens, [(hook, fn)]), "the spliced run").sum()
        (grad,) = torch.autograd.grad(value, [kept["f"]])
    return (grad * kept["f"]).detach()


def logit_effects(model, sae: SAE, features: Sequence[int] | None = None) -> Float[Tensor, "feature d_vocab"]:
    """Each feature's direct effect on the logits (every feature, or the listed ones, in that order): its
    decoder row through the final LayerNorm's centring and gain, then the unembedding (the per-token
    LayerNorm scale left out, as feature dashboards do)."""
    from interp.backends import ln_affine

    if not sae.hook_name.split(".")[-1].startswith(("hook_resid", "hook_attn_out", "hook_mlp_out")):
        raise SAEFormatError(f"logit_effects needs a SAE that writes the residual stream, not {sae.hook_name}")
    _check_device(model, sae)
    rows = sae.W_dec if features is None else sae.W_dec[_check_features(sae, features)]
    with torch.no_grad():
        direction = rows - rows.mean(-1, keepdim=True)
        w, _ = ln_affine(model.ln_final)
        if w is not None:
            direction = direction * w
        return direction.to(model.W_U.dtype) @ model.W_U


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """What ``train`` was asked (stored beside its checkpoints, checked on resume), and on which activations
    (``data``: the harvest's or stream's ``digest``)."""

    data: str
    hook: str
    d_sae: int
    architecture: str
    k: int | None
    l1: float
    batch_size: int
    steps: int
    lr: float
    seed: int
    aux_k: int
    aux_coeff: float
    dead_after: int
    l0: float
    bandwidth: float


def _global_batches(data: Harvest | Stream, hook: str, batch_size: int, seed: int, start: int = 0) -> Iterator[Tensor]:
    """Global batches ``[batch_size, d_in]`` from step ``start`` on, the same on every rank, epoch after epoch
    (epoch e shuffled with seed + e); each row's first position and each shard's short last batch are left out
    (every step has one size). The steps before ``start`` are skipped without reading their shards."""
    per_epoch = data.batch_count(batch_size, skip_first=True, drop_last=True)
    epoch, start = divmod(start, per_epoch)
    while True:
        for batch in data.batches(hook, batch_size, seed=seed + epoch, skip_first=True, drop_last=True, start=start):
            yield batch.flatten(1).float()
        epoch, start = epoch + 1, 0


def train(data, *, hook: str, d_sae: int, architecture: str = "topk", k: int | None = None, l1: float | None = None,
          l0: float | None = None, bandwidth: float | None = None, batch_size: int = 4096, steps: int = 1000,
          lr: float = 4e-4,
          seed: int = 0, aux_k: int | None = None, aux_coeff: float | None = None, dead_after: int = 1_000_000,
          out: str | os.PathLike | None = None, checkpoint_every: int = 100, progress: bool = True,
          metadata: Mapping | None = None, device: str = "cpu") -> SAE:
    """Train a SAE on activations at ``hook``: a harvest's (``data``: ``interp.harvest.open(path)`` or a path),
    or computed from tokens as the batches need them (``data``: ``interp.harvest.Stream(model, tokens, [hook])``,
    the same batches a harvest of those rows gives, so the same SAE, with nothing written).

    - **Batches**: ``batch_size`` tokens per step, drawn in the harvest's seeded shuffled order (each row's BOS
      left out); under ``torchrun`` each of N ranks takes its 1/N slice of the same global batch, and the
      gradients are summed across ranks (each rank's loss is its share of the global batch's), so N processes
      take the steps one process takes with the same ``batch_size``.
    - **Loss**: the squared error summed over dimensions, averaged over the batch; ``"standard"`` adds
      ``l1 * sum_i f_i ||W_dec_i||`` (``l1`` default 5); ``"topk"`` keeps ``k`` latents (default 16) and the
      decoder rows at unit norm after each step; ``"jumprelu"`` adds ``l0 * L0`` (default 1) and trains its
      thresholds through the straight-through estimator of
      Rajamanoharan et al. (2024), a rectangle kernel of width ``bandwidth``, as SAELens's
      ``JumpReLUTrainingSAE`` does by default (sparsity mode ``"step"``, no estimator gradient into the
      pre-activations; thresholds start at 0.01 and are kept >= 0; ``bandwidth`` default 0.05). An option of
      another architecture than the one trained (``l1`` for ``"topk"``, ``k`` for ``"standard"``) is refused,
      not ignored.
    - **Dead latents**: a latent is dead when it has not fired in the last ``dead_after`` tokens (counted over
      every rank: the counts are reduced with a max, so ranks never diverge). For ``"topk"`` and
      ``"standard"``, their pre-activations' top ``aux_k`` (default d_in // 2) reconstruct the live latents'
      error (AuxK, Gao et al. 2024), added as ``aux_coeff * ||e - e_hat||^2 / ||e||^2`` over the global batch
      (``aux_coeff`` default 1/32). For ``"jumprelu"``, Anthropic's pre-activation loss pulls their
      pre-activations up to the threshold, ``aux_coeff * sum_i relu(threshold_i - pre_i) ||W_dec_i||`` over the
      dead latents, averaged over the batch (default 3e-6), as SAELens's ``pre_act_loss_coefficient``.
    - **Init** (seeded): decoder rows random unit vectors, the encoder their transpose, ``b_dec`` the first
      global batch's mean.
    - **Checkpoints** in ``out`` every ``checkpoint_every`` steps (the SAE in SAELens's format, the optimiser and
      the step, each through a temporary name); a rerun with the same arguments on the same activations (the
      same harvest, or a stream of the same rows through the same model) resumes from the last one, with the
      batches it would have seen; other arguments or activations are refused.

    - **Device**: the SAE trains on ``device`` (``"cpu"`` or ``"cuda"``); the batches come from the CPU, and the
      dead-latent counts stay there. Under ``torchrun`` on GPUs each rank trains on its own GPU and the
      gradients are summed by nccl.

    Returns the trained SAE (also saved in ``out``), on ``device``.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    for name, value in (("k", k), ("l1", l1), ("l0", l0), ("bandwidth", bandwidth), ("aux_k", aux_k)):
        if value is not None and architecture not in _OPTION_OF[name]:
            raise ValueError(f"{name} is an option of architecture {' or '.join(map(repr, _OPTION_OF[name]))}, "
                             f"not {architecture!r}")
    k = 16 if k is None and architecture == "topk" else k
    l1 = 5.0 if l1 is None else l1
    l0 = 1.0 if l0 is None else l0
    bandwidth = 0.05 if bandwidth is None else bandwidth
    data = data if isinstance(data, Harvest | Stream) else Harvest(data)
    if hook not in data.hooks or data.stats_only:
        where = f"the harvest {data.path}" if isinstance(data, Harvest) else "the stream"
        raise ValueError(f"{where} holds no activations of {hook!r} (hooks {data.hooks}"
                         f"{', statistics only' if data.stats_only else ''})")
    for value, name in ((l1, "l1"), (l0, "l0"), (bandwidth, "bandwidth"), (aux_coeff, "aux_coeff")):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth!r}")
    if not (isinstance(lr, float | int) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    d_sae = check_positive_int(d_sae, "d_sae")
    k = check_positive_int(k, "k", high=d_sae) if architecture == "topk" else None
    aux_k = None if aux_k is None else check_positive_int(aux_k, "aux_k")
    steps = check_positive_int(steps, "steps")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    out = None if out is None else check_folder(out, "the training's checkpoints")
    dead_after = check_positive_int(dead_after, "dead_after")
    check_gradients_on("training")
    device = check_device(device)
    rank, world = distributed.join()
    batch_size = check_positive_int(batch_size, "batch_size")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must divide evenly over {world} processes")
    if data.batch_count(batch_size, skip_first=True, drop_last=True) == 0:
        raise ValueError(f"batch_size {batch_size} is more than any one shard holds (batches are drawn within a "
                         "shard): use a smaller batch_size, or more shard_rows")
    d_in = math.prod(data.shard(0, hook).shape[2:])
    if aux_coeff is None:
        aux_coeff = _PRE_ACT_COEFF if architecture == "jumprelu" else _AUX_K_COEFF
    cfg = TrainConfig(data.digest, hook, d_sae, architecture, k, float(l1), batch_size, steps, float(lr), seed,
                      d_in // 2 if aux_k is None else aux_k, float(aux_coeff), dead_after, float(l0),
                      float(bandwidth))
    metadata = {"model_name": data.model_label, **(metadata or {})}
    if data.model_processing is not None:  # SAELens's record of the model's processing (an older harvest has none)
        metadata.setdefault("model_from_pretrained_kwargs", _processing_kwargs(data.model_processing))
    sae = SAE(d_in, d_sae, hook_name=hook, architecture=architecture, k=k, metadata=metadata, device=device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(d_sae, dtype=torch.int64)  # tokens since each latent last fired (all ranks)
    start = 0
    if out is not None and (out / "train.json").exists():
        _check_same_run(out, cfg)
    if out is not None and (out / "trainer_state.pt").exists():
        start = _resume(out, sae, optimizer, since_fired)
    else:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            W = torch.randn(d_sae, d_in, generator=generator)
            sae.W_dec.copy_(W / W.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_dec.copy_(next(_global_batches(data, hook, batch_size, seed)).mean(0))  # also step 0's batch
            if sae.threshold is not None:
                sae.threshold.fill_(_THRESHOLD_INIT)
        if out is not None and rank == 0:
            atomic_write(out / "train.json", json.dumps(asdict(cfg), indent=1) + "\n")
    batches = _global_batches(data, hook, batch_size, seed, start)
    share = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, unit="step", desc=f"train SAE ({world} process{'es' * (world > 1)})",
                   file=sys.stderr)
    for step in range(start, steps):
        x = next(batches)[share].to(device)
        with torch.enable_grad():  # if the caller is under no_grad
            loss, parts, fired = _loss(sae, x, cfg, (since_fired >= cfg.dead_after).to(device))
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
        for p in sae.parameters():
            distributed.all_reduce(p.grad)
        optimizer.step()
        with torch.no_grad():
            if architecture == "topk":
                sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
            elif architecture == "jumprelu":  # below 0 the gate would pass negative pre-activations
                sae.threshold.clamp_(min=0)
        fired = distributed.all_reduce(fired.to("cpu", torch.int64), "max").bool()
        since_fired = torch.where(fired, 0, since_fired + batch_size)
        if bar is not None:
            bar.update()
            bar.set_postfix(mse=f"{parts['mse']:.4g}", dead=int((since_fired >= cfg.dead_after).sum()))
        if out is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps) and rank == 0:
            _checkpoint(out, sae, optimizer, since_fired, step + 1)
    if bar is not None:
        bar.close()
    distributed.barrier()  # every rank returns once rank 0's last checkpoint is written
    return sae


# The defaults SAELens 6 trains JumpReLU SAEs with (``jumprelu_init_threshold``), and the dead-latent losses'
# coefficients: AuxK's (Gao et al. 2024) and the pre-activation loss's (Anthropic's, SAELens's suggested 3e-6).
_THRESHOLD_INIT = 0.01
_AUX_K_COEFF = 1 / 32
_PRE_ACT_COEFF = 3e-6


class _JumpReLU(torch.autograd.Function):
    """JumpReLU's features ``pre * (pre > threshold)`` and its firing indicator (whose sum is L0), with the
    straight-through estimator of Rajamanoharan et al. (2024) for the threshold: a rectangle kernel of width
    ``bandwidth`` around it, ``-threshold / bandwidth`` for the features and ``-1 / bandwidth`` for the
    indicator; the pre-activations get the gate's own gradient, and none from the estimator."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        fired = (pre > threshold).to(pre.dtype)
        return pre * fired, fired

    @staticmethod
    def backward(ctx, grad_features: Tensor, grad_fired: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        scaled = (pre - threshold) / ctx.bandwidth
        kernel = ((scaled > -0.5) & (scaled < 0.5)).to(pre.dtype) / ctx.bandwidth
        grad_threshold = -(kernel * (threshold * grad_features + grad_fired)).sum(0)
        return (pre > threshold) * grad_features, grad_threshold, None


def _loss(sae: SAE, x: Tensor, cfg: TrainConfig, dead: Tensor) -> tuple[Tensor, dict, Tensor]:
    """This rank's share of the global batch's loss, its parts (this rank's), and which latents fired."""
    pre = sae.pre_acts(x)
    if cfg.architecture == "jumprelu":
        features, fired = _JumpReLU.apply(pre, sae.threshold, cfg.bandwidth)
    else:
        features = sae.activation(pre)
    x_hat = sae.decode(features)
    error = x - x_hat
    mse = error.pow(2).sum() / cfg.batch_size
    loss = mse
    if cfg.architecture == "standard":
        loss = loss + cfg.l1 * (features * sae.W_dec.norm(dim=-1)).sum() / cfg.batch_size
    elif cfg.architecture == "jumprelu":
        loss = loss + cfg.l0 * fired.sum() / cfg.batch_size
    if dead.any():
        loss = loss + cfg.aux_coeff * (_pre_act_loss(sae, pre, dead, cfg) if cfg.architecture == "jumprelu"
                                       else _aux_k_loss(sae, pre, error.detach(), dead, cfg))
    return loss, {"mse": float(mse.detach()) * cfg.batch_size / len(x)}, (features > 0).any(0)


def _aux_k_loss(sae: SAE, pre: Tensor, e: Tensor, dead: Tensor, cfg: TrainConfig) -> Tensor:
    """AuxK: the dead latents' top ``aux_k`` pre-activations reconstruct the error ``e``, ``||e - e_hat||^2 /
    ||e||^2`` over the global batch (the denominator summed over the ranks)."""
    scale = distributed.all_reduce(e.pow(2).sum().reshape(1)).clamp_min(1e-12)
    values, indices = pre[:, dead].topk(min(cfg.aux_k, int(dead.sum())), dim=-1)
    e_hat = torch.zeros_like(pre[:, dead]).scatter(-1, indices, values.relu()) @ sae.W_dec[dead]
    return (e - e_hat).pow(2).sum() / scale[0]


def _pre_act_loss(sae: SAE, pre: Tensor, dead: Tensor, cfg: TrainConfig) -> Tensor:
    """Anthropic's pre-activation loss: ``sum_i relu(threshold_i - pre_i) ||W_dec_i||`` over the dead latents,
    this rank's share of the global batch's mean."""
    below = (sae.threshold - pre).relu()[:, dead] * sae.W_dec[dead].norm(dim=-1)
    return below.sum() / cfg.batch_size


def _checkpoint(out: Path, sae: SAE, optimizer, since_fired: Tensor, step: int) -> None:
    """Everything a resume needs in one file written through a temporary name (a kill leaves the last whole
    checkpoint), then the SAE in SAELens's format beside it."""
    import io

    buffer = io.BytesIO()
    torch.save({"step": step, "sae": sae.state_dict(), "optimizer": optimizer.state_dict(),
                "since_fired": since_fired}, buffer)
    atomic_write(out / "trainer_state.pt", buffer.getvalue())
    save(sae, out / "sae")


def _check_same_run(out: Path, cfg: TrainConfig) -> None:
    before = json.loads((out / "train.json").read_text())
    now = asdict(cfg)
    if before != now:
        differ = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
        named = [("data (other activations: another harvest, or other token rows or model)" if key == "data" else key)
                 for key in differ]
        raise ValueError(f"{out} holds a SAE training run with another {', '.join(named)}: use another folder, "
                         "or delete this one to start again")


def _resume(out: Path, sae: SAE, optimizer, since_fired: Tensor) -> int:
    """Load the last checkpoint; returns its step. (A run killed before its first checkpoint starts again.)"""
    state = torch.load(out / "trainer_state.pt", map_location="cpu", weights_only=True)  # copied to the SAE's device
    sae.load_state_dict(state["sae"])
    optimizer.load_state_dict(state["optimizer"])
    since_fired.copy_(state["since_fired"])
    return int(state["step"])


# ---------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m interp.sae", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a sparse autoencoder (interp.sae.train) on a harvest's activations, or on activations "
                    "computed from token rows as training reads them; checkpointed and resumable; the SAE is written "
                    "in SAELens's format to OUT/sae.\n\n"
                    "    python -m interp.sae harvest/json --hook blocks.1.hook_resid_pre --d-sae 4096 --k 16 "
                    "--out sae/json\n"
                    "    python -m interp.sae rows.npy --model bundled --hook blocks.1.hook_resid_pre --d-sae 4096 "
                    "--out sae/rows\n"
                    "    torchrun --nproc_per_node 2 -m interp.sae ...   # the same steps, data-parallel")
    parser.add_argument("data", help="a harvest folder (python -m interp.harvest) holding the hook's activations, or "
                                     "a .npy file of token rows [rows, pos], each row's first position left out")
    parser.add_argument("--model", default="bundled", help="with token rows: the model to run (default: bundled)")
    parser.add_argument("--backend", default=None, help="with token rows: bridge or hooked (default: the library's)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda: where the SAE trains (and, with token rows, the model runs)")
    parser.add_argument("--shard-rows", type=int, default=256,
                        help="with token rows: rows whose activations are shuffled together (default: 256)")
    parser.add_argument("--hook", required=True, help="the hook whose activations to train on")
    parser.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, then the SAE in OUT/sae)")
    parser.add_argument("--d-sae", type=int, required=True, help="number of latents")
    parser.add_argument("--architecture", default="topk", choices=ARCHITECTURES, help="default: topk")
    parser.add_argument("--k", type=int, help="TopK's k (default: 16; topk only)")
    parser.add_argument("--l1", type=float, help="standard SAEs' L1 coefficient (default: 5; standard only)")
    parser.add_argument("--l0", type=float, help="JumpReLU SAEs' L0 coefficient (default: 1; jumprelu only)")
    parser.add_argument("--bandwidth", type=float,
                        help="JumpReLU's straight-through estimator's kernel width (default: 0.05; jumprelu only)")
    parser.add_argument("--batch-size", type=int, default=4096, help="tokens per step, over all processes (default: 4096)")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps (default: 1000)")
    parser.add_argument("--lr", type=float, default=4e-4, help="Adam's learning rate (default: 4e-4)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order (default: 0)")
    parser.add_argument("--dead-after", type=int, default=1_000_000,
                        help="tokens without firing before a latent counts as dead (default: 1,000,000)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from interp.errors import ModelLoadError

    try:
        distributed.join()  # before a model loads, so that under torchrun "cuda" is this rank's own GPU
        data = _token_rows(args) if str(args.data).endswith(".npy") else args.data
        train(data, hook=args.hook, d_sae=args.d_sae, architecture=args.architecture, k=args.k, l1=args.l1,
              l0=args.l0, bandwidth=args.bandwidth,
              batch_size=args.batch_size, steps=args.steps, lr=args.lr, seed=args.seed, dead_after=args.dead_after,
              out=args.out, checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
              device=args.device)
    except (ModelLoadError, ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError) as err:  # one line
        raise SystemExit(f"error: {err}") from None
    distributed.leave()
    return 0


def _token_rows(args) -> Stream:
    """The command's ``.npy`` of token rows as a ``Stream`` through ``--model``."""
    import numpy as np

    from interp.loading import load_model

    rows = np.load(args.data)
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{args.data} holds a {rows.dtype} array of shape {rows.shape}: token rows are a 2-d integer "
                         "array [rows, pos]")
    model = load_model(args.model, device=args.device, **({} if args.backend is None else {"backend": args.backend}))
    return Stream(model, torch.from_numpy(rows.astype(np.int64)), [args.hook], shard_rows=args.shard_rows)


if __name__ == "__main__":
    raise SystemExit(main())
