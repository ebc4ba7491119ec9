"""MOAI-LLM: Qwen3-style causal language models on HuggingFace Transformers.

Importing the package registers MoaiConfig / MoaiModel / MoaiForCausalLM with the Auto classes. Their
`save_pretrained` also writes the model code and an `auto_map`, so saved models load with
`trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_moai import MoaiConfig
from .modeling_moai import MoaiForCausalLM, MoaiModel, MoaiPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(MoaiConfig.model_type, MoaiConfig)
AutoModel.register(MoaiConfig, MoaiModel)
AutoModelForCausalLM.register(MoaiConfig, MoaiForCausalLM)

__all__ = ["MoaiConfig", "MoaiForCausalLM", "MoaiModel", "MoaiPreTrainedModel"]
