"""Load GPT-2 into TransformerLens: by name (the path real users take), from a local checkpoint directory with
no network at all, or the small model bundled with this package.

Both backends give the same hook names and numerics (``interp.backends`` says which the installed
TransformerLens has):

- ``backend="bridge"`` (the default): ``TransformerBridge`` with ``enable_compatibility_mode()``.
- ``backend="hooked"``: ``HookedTransformer``, TransformerLens 3.x only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from interp.backends import DEFAULT_BACKEND, check_backend
from interp.errors import (
    BackendUnavailableError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DeviceUnavailableError,
    ModelLoadError,
    NotGPT2CheckpointError,
    UnknownModelError,
    WeightsUnavailableError,
)
from interp.specs import BUNDLED_DIR, read_gpt2_config, resolve
from interp.tokenizer import gpt2_tokenizer

__all__ = [
    "BUNDLED_DIR",
    "BackendUnavailableError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DeviceUnavailableError",
    "ModelInfo",
    "ModelLoadError",
    "NotGPT2CheckpointError",
    "UnknownModelError",
    "WeightsUnavailableError",
    "load_gpt2_or_bundled",
    "load_model",
    "model_info",
]

_WAYS_OUT = (
    "Ways out: (1) connect to the internet once, so the weights land in the Hugging Face cache; "
    "(2) pass a local GPT-2 checkpoint directory (config.json + model.safetensors) as the spec; "
    "(3) use the offline model bundled with interp: load_model('bundled')."
)


PROCESSING_STEPS = ("fold_ln", "center_writing_weights", "center_unembed")  # TransformerLens's, as load_model takes them

# The hooks whose activations each step moves: centring the writing weights moves every residual-stream
# activation by its mean over d_model, and folding LayerNorm takes its gain and bias out of hook_normalized.
# Neither moves z, q, k, v, the patterns or the MLP's neurons; centring the unembedding moves only the logits.
_MOVED_BY = {"center_writing_weights": ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid",
                                        "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_mlp_in",
                                        "hook_result", "hook_q_input", "hook_k_input", "hook_v_input"),
             "fold_ln": ("hook_normalized",)}


def processing_moves(step: str, hook: str) -> bool:
    """Whether weight processing ``step`` changes the activations at ``hook`` (a hook name)."""
    return hook.rsplit(".", 1)[-1] in _MOVED_BY.get(step, ())


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from; figures and the manifest name the model with ``label``."""

    spec: str
    backend: str
    label: str  # human name for titles, e.g. "GPT-2 small" or "bundled stdlib-GPT (2L)"
    checkpoint: str | None  # local directory, or None for a Hub model
    weights_sha256: str  # of the state dict the model runs with (after processing and casting)
    processing: tuple[str, ...] = ()  # the weight processing applied, e.g. ("fold_ln", "center_writing_weights")
    dtype: str = "float32"  # the parameters' dtype


def model_info(model) -> ModelInfo:
    """The ``ModelInfo`` that ``load_model`` attached to ``model``."""
    info = getattr(model, "interp_info", None)
    if info is None:
        raise ValueError("this model was not loaded with interp.load_model, so its origin is unknown")
    return info


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | torch.device) -> str:
    """Return ``device`` as a string if this machine has it; ``DeviceUnavailableError`` otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceUnavailableError(f"{device!r} is not a torch device (try 'cpu' or 'cuda')") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {str(device)!r}: this machine has no CUDA device (or this torch "
                                         "is a CPU build); use device='cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} "
                                         "CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"device {str(device)!r}: MPS is not available here; use device='cpu'")
    return str(device)


def load_model(spec: str | os.PathLike = "gpt2", *, backend: str = DEFAULT_BACKEND, device: str | None = None,
               dtype: torch.dtype = torch.float32, fold_ln: bool = True, center_writing_weights: bool = True,
               center_unembed: bool = True):
    """Load a GPT-2 model into TransformerLens.

    Args:
        spec: a GPT-2 family name (``"gpt2"`` is GPT-2 small; ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``,
            ``distilgpt2``), a local Hugging Face GPT-2 checkpoint directory (``config.json`` +
            ``model.safetensors``), or ``"bundled"`` (see ``interp.specs.resolve``).
        backend: ``"bridge"`` (TransformerBridge in compatibility mode; the default, on both TransformerLens
            majors) or ``"hooked"`` (HookedTransformer; TransformerLens 3.x only, see ``interp.backends``).
        device: ``"cpu"``, ``"cuda"``...; default: cuda when available.
        dtype: parameter dtype. float16 and bfloat16 models are processed in float32, then cast, so the
            folding itself loses nothing to the lower precision.
        fold_ln, center_writing_weights, center_unembed: TransformerLens's standard weight processing. None
            of them changes what the model computes (up to float error) or what a head's z is. Turn all
            three off for an unprocessed model whose weights equal the checkpoint's.

    Value biases are never folded (TransformerLens's ``fold_value_biases``): folding moves each head's
    constant output ``b_V @ W_O`` into the layer's ``b_O``, so a head's ``hook_z`` would no longer be all of
    its output, and zeroing it (``ablate_heads``) would leave that constant behind.

    Returns:
        The model in eval mode, with ``model.interp_info`` (a ``ModelInfo``) attached.

    Raises:
        ModelLoadError: a subclass saying what is wrong with the spec, the backend or the device, and what
            to do, raised before anything is read or downloaded.

    Example:
        >>> model = load_model("bundled")
        >>> model.cfg.n_layers, model_info(model).label
        (2, 'bundled mini-GPT-2 (2 layers, trained in this repo)')
    """
    check_backend(backend)
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be a floating-point torch dtype (float32, float16, bfloat16...), got {dtype!r}")
    resolved = resolve(spec)
    device = check_device(device) if device is not None else _default_device()
    processing = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    # Weights are processed in float32 (or float64), then cast: processing at reduced precision loses accuracy.
    process_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if resolved.kind == "local":
        model = _load_local(resolved.path, backend, device, process_dtype, processing)
    else:
        model = _load_named(resolved.name, backend, device, process_dtype, processing)
    if dtype != process_dtype:
        model.to(dtype, print_details=False)
    model.eval()
    model.interp_info = ModelInfo(resolved.spec, backend, resolved.label,
                                  str(resolved.path) if resolved.path else None, weights_sha256(model),
                                  tuple(step for step, on in processing.items() if on), str(dtype).removeprefix("torch."))
    return model


FALLBACK_MESSAGE = ("GPT-2 small's weights are not cached and cannot be downloaded: using the bundled offline "
                    "model instead (load_model('gpt2'), or --model gpt2 on the command line, insists on GPT-2).")


def load_gpt2_or_bundled(**kwargs):
    """GPT-2 small, or, when its weights are neither cached nor downloadable, the bundled model, saying so in
    one line on stderr (``FALLBACK_MESSAGE``). What ``make figures`` and the notebook load by default.

    Example:
        >>> model = load_gpt2_or_bundled(device="cpu")
    """
    try:
        return load_model("gpt2", **kwargs)
    except WeightsUnavailableError:
        print(FALLBACK_MESSAGE, file=sys.stderr)
        return load_model("bundled", **kwargs)


def weights_sha256(model) -> str:
    """sha256 of the state dict the model runs with (names, dtypes, shapes and values), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- local


def _read_config(path: Path) -> dict:
    """The checkpoint's config, after checking that its weights file is there too."""
    if not path.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint directory at {path}")
    missing = [name for name in ("config.json", "model.safetensors") if not (path / name).exists()]
    if missing:
        raise CheckpointNotFoundError(
            f"{path} is not a Hugging Face GPT-2 checkpoint: missing {', '.join(missing)} "
            "(interp loads only safetensors weights)"
        )
    return read_gpt2_config(path / "config.json")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars ("Loading weights: 100%") inside the block, then restore them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _hf_model(path: Path, dtype: torch.dtype):
    """The checkpoint as a Hugging Face ``GPT2LMHeadModel`` on the CPU, from safetensors only, no Hub access.

    Every tensor the model needs must be in the file, with its shape and finite values: transformers would
    otherwise initialise a missing tensor at random, silently.
    """
    from safetensors import SafetensorError
    from transformers import GPT2LMHeadModel

    weights = path / "model.safetensors"
    try:
        with quiet_transformers():
            model, info = GPT2LMHeadModel.from_pretrained(
                path, local_files_only=True, use_safetensors=True, dtype=dtype, attn_implementation="eager",
                output_loading_info=True, ignore_mismatched_sizes=True,  # reported below, by name
            )
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CorruptCheckpointError(
            f"cannot read the weights in {weights} (truncated, corrupt or mis-shaped?): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(kind) or ())
        names = [n for n in names if not n.endswith(_IGNORED_BUFFERS)]
        if names:
            problems.append(f"{kind.replace('_', ' ')}: {_some(names)}")
    non_finite = [name for name, t in model.state_dict().items() if not torch.isfinite(t).all()]
    if non_finite:
        problems.append(f"non-finite values (nan or inf) in {_some(non_finite)}")
    if problems:
        raise CorruptCheckpointError(f"{weights} does not hold a complete GPT-2: {'; '.join(problems)}. "
                                     "Re-save it with save_pretrained, or re-download it")
    return model


_IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older checkpoints carry


def _some(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _local_tokenizer(path: Path):
    from transformers import AutoTokenizer

    files = [name for name in ("tokenizer.json", "vocab.json") if (path / name).exists()]
    if not files:
        return gpt2_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed file
        raise CorruptCheckpointError(f"cannot read the tokenizer in {path / files[0]}: {type(err).__name__}: "
                                     f"{str(err).splitlines()[0] if str(err) else ''}") from None


def hooked_config(config: dict, device: str, dtype: torch.dtype):
    """A ``HookedTransformerConfig`` from a GPT-2 ``config.json``, as TransformerLens maps GPT2LMHeadModel."""
    from transformer_lens import HookedTransformerConfig

    n_embd, n_head = config["n_embd"], config["n_head"]
    return HookedTransformerConfig(
        d_model=n_embd,
        d_head=n_embd // n_head,
        n_heads=n_head,
        d_mlp=config.get("n_inner") or 4 * n_embd,
        n_layers=config["n_layer"],
        n_ctx=config.get("n_ctx", config["n_positions"]),
        eps=config.get("layer_norm_epsilon", 1e-5),
        d_vocab=config["vocab_size"],
        act_fn=config.get("activation_function", "gelu_new"),
        use_attn_scale=config.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=config.get("scale_attn_by_inverse_layer_idx", False),
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        device=device,
        dtype=dtype,
    )


def _load_local(path: Path, backend: str, device: str, dtype: torch.dtype, processing: dict):
    config = _read_config(path)
    hf_model = _hf_model(path, dtype)
    tokenizer = _local_tokenizer(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated", category=DeprecationWarning)
        if backend == "hooked":  # check_backend made sure this TransformerLens has it
            from transformer_lens import HookedTransformer
            from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

            cfg = hooked_config(config, device, dtype)
            # Processed on the CPU, where the model is built, then moved: TransformerLens creates the tensors it
            # adds (the unembedding bias) on the model's device, and mixed devices crash its folding.
            model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
            model.load_and_process_state_dict(convert_gpt2_weights(hf_model, cfg), fold_value_biases=False,
                                              **processing)
            model.to(device, print_details=False)
        else:
            model = _bridge(str(path), device, dtype, processing, hf_model=hf_model.to(device), tokenizer=tokenizer)
    return model


def _bridge(name: str, device: str, dtype: torch.dtype, processing: dict, **kwargs):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, device=device, dtype=dtype, **kwargs)
    if any(processing.values()):
        bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=False, **processing)
    else:
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return bridge


# ---------------------------------------------------------------------------------------------- named


def weights_cached(name: str) -> bool:
    """Whether a GPT-2 family model's weights are in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(repo, filename), str)
        for repo in {name, f"openai-community/{name}"}
        for filename in ("model.safetensors", "pytorch_model.bin")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_named(name: str, backend: str, device: str, dtype: torch.dtype, processing: dict):
    if not weights_cached(name) and not _hub_reachable():
        raise WeightsUnavailableError(
            f"the weights of {name!r} are not in the local Hugging Face cache and the Hub cannot be reached. "
            f"{_WAYS_OUT}"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated", category=DeprecationWarning)
        try:
            if backend == "hooked":
                from transformer_lens import HookedTransformer

                return HookedTransformer.from_pretrained(name, device=device, dtype=dtype, fold_value_biases=False,
                                                         **processing)
            return _bridge(name, device, dtype, processing)
        except OSError as err:
            raise WeightsUnavailableError(f"could not load {name!r}: {err}. {_WAYS_OUT}") from None
