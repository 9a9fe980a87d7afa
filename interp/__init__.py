"""interp: inspect GPT-2 small with TransformerLens."""

from interp.loading import load_model, model_info
from interp.tokenizer import gpt2_tokenizer

__version__ = "0.1.0"

__all__ = ["gpt2_tokenizer", "load_model", "model_info"]
