"""interp: inspect GPT-2 small with TransformerLens.

The names a researcher types in IPython; everything else lives in the topic modules
(``interp.specs``, ``interp.loading``, ``interp.backends``, ``interp.architecture``, ``interp.inputs``,
``interp.hooks``, ``interp.caching``, ``interp.interventions``, ``interp.metrics``, ``interp.heads``,
``interp.lens``, ``interp.patching``, ``interp.circuits``, ``interp.harvest``, ``interp.sae``, ``interp.sampling``,
``interp.figures``, ``interp.errors``).
"""

from interp.architecture import (
    architecture,
    component_table,
    config_summary,
    parameter_listing,
    split_attention,
)
from interp.caching import cache_heads, decompose_resid, estimate_cache_bytes, residual_stream
from interp.heads import head_scores
from interp.hooks import temporary_hooks
from interp.inputs import to_tokens
from interp.interventions import ablate_heads, patch_activation
from interp.lens import direct_logit_attribution, logit_lens
from interp.loading import load_model, model_info
from interp.patching import activation_patching, attribution_patching, steer, steering_vector
from interp.tokenizer import gpt2_tokenizer

__version__ = "0.1.0"

__all__ = [
    "ablate_heads",
    "activation_patching",
    "architecture",
    "attribution_patching",
    "cache_heads",
    "component_table",
    "config_summary",
    "decompose_resid",
    "direct_logit_attribution",
    "estimate_cache_bytes",
    "gpt2_tokenizer",
    "head_scores",
    "load_model",
    "logit_lens",
    "model_info",
    "parameter_listing",
    "patch_activation",
    "residual_stream",
    "split_attention",
    "steer",
    "steering_vector",
    "temporary_hooks",
    "to_tokens",
]
