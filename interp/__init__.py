"""interp: inspect GPT-2 small with TransformerLens."""

from interp.architecture import architecture, component_table, config_summary, parameter_listing, split_attention
from interp.loading import load_model, model_info
from interp.tokenizer import gpt2_tokenizer

__version__ = "0.1.0"

__all__ = [
    "architecture",
    "component_table",
    "config_summary",
    "gpt2_tokenizer",
    "load_model",
    "model_info",
    "parameter_listing",
    "split_attention",
]
