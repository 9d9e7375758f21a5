"""Configuration of igsm's GPT for transformers (remote code: imports only transformers).

Written next to the weights by igsm's ``python -m igsm export`` (a reproduction of "Physics of
Language Models: Part 2.1"); ``modeling_igsm.py`` holds the model.
"""

from transformers import PretrainedConfig


class IgsmConfig(PretrainedConfig):
    """A GPT-2-style model with rotary embeddings and optional Canon layers.

    - ``hidden_size`` d, ``num_attention_heads`` H (head dim d / H), ``num_hidden_layers`` L; the
      MLP is d -> 4d -> exact GELU -> d; pre-LayerNorm blocks; tied input/output embeddings.
    - ``rotary_dim``: the first ``rotary_dim`` dims of each head are rotated ("rotate half"
      layout, frequencies ``rope_base ** (-2i / rotary_dim)``); 0 = no positions (NoPE).
    - ``canon``: letters of ``"ABCD"``, where a Canon layer ``h + conv(h)`` (causal depthwise
      convolution over ``canon_kernel`` positions, no bias) sits: A after ln_1, B on the fused
      q/k/v projection, C after ln_2, D on the MLP's hidden layer (4d).
    - ``bias``: biases on every Linear and LayerNorm.
    - ``use_cache``: ``generate`` keeps keys, values and Canon states between steps.
    """

    model_type = "igsm"

    def __init__(
        self,
        vocab_size: int = 128,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 1,
        max_position_embeddings: int = 512,
        rotary_dim: int = 64,
        rope_base: float = 10000.0,
        canon: str = "",
        canon_kernel: int = 4,
        bias: bool = True,
        layer_norm_eps: float = 1e-5,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rotary_dim = rotary_dim
        self.rope_base = rope_base
        self.canon = canon
        self.canon_kernel = canon_kernel
        self.bias = bias
        self.layer_norm_eps = layer_norm_eps
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
