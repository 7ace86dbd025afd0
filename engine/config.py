"""Hyperparameters, read once from GGUF metadata (pipeline stage: gguf.py -> config.py -> model.py).

Only `ModelConfig.from_metadata` touches the `{arch}.*` keys, through the explicit key -> field
table `_KEYS`; everything derived is a property. Nothing else in the engine reads raw metadata
for hyperparameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .strtable import StringTable

# Transformer families: ModelConfig, the forward pass in engine/model.py.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3", "gpt2")  # (engine/model.py ARCHITECTURES adds atome)

# key suffix under "{arch}." -> (field name, required)
_KEYS = {
    "context_length": ("context_length", True),
    "embedding_length": ("d_model", True),
    "block_count": ("n_layers", True),
    "feed_forward_length": ("d_ff", True),
    "attention.head_count": ("n_heads", True),
    "attention.head_count_kv": ("n_kv_heads", False),
    "attention.key_length": ("key_length", False),
    "attention.value_length": ("value_length", False),
    "attention.layer_norm_rms_epsilon": ("norm_eps", False),
    "attention.layer_norm_epsilon": ("layer_norm_eps", False),
    "attention.sliding_window": ("sliding_window", False),
    "rope.freq_base": ("rope_base", False),
    "rope.freq_base_swa": ("rope_base_local", False),
    "rope.dimension_count": ("rope_dim", False),
    "rope.scaling.type": ("rope_scaling_type", False),
    "rope.scaling.factor": ("rope_scaling_factor", False),
    "vocab_size": ("vocab_size", False),
    "mote.activation": ("activation", False),  # written by `mote convert` for exact-GELU models
}


class ConfigError(ValueError):
    """The model's metadata asks for something the engine cannot run."""


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    context_length: int
    d_model: int
    n_layers: int
    d_ff: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    norm_eps: float | None = None  # RMSNorm epsilon (llama, qwen2, gemma3)
    layer_norm_eps: float | None = None  # LayerNorm epsilon (gpt2)
    sliding_window: int | None = None
    rope_base: float = 10000.0
    rope_base_local: float | None = None  # gemma3 sliding-window layers
    rope_dim: int | None = None
    rope_scaling_type: str | None = None
    rope_scaling_factor: float | None = None
    activation: str | None = None  # feed-forward activation when not the family's own ("gelu_erf")

    # ---- derived values -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.key_length or self.d_model // self.n_heads

    @property
    def v_head_dim(self) -> int:
        return self.value_length or self.head_dim

    @property
    def eps(self) -> float:
        if self.architecture == "gpt2":
            return self.layer_norm_eps if self.layer_norm_eps is not None else 1e-5
        return self.norm_eps if self.norm_eps is not None else 1e-6

    @property
    def rope_neox(self) -> bool:
        """Rotate first/second halves (NeoX) rather than adjacent pairs (llama's GGUF layout)."""
        return self.architecture in ("qwen2", "gemma3")

    @property
    def layer_norm(self) -> bool:
        """LayerNorm with bias (gpt2) rather than RMSNorm."""
        return self.architecture == "gpt2"

    @property
    def learned_positions(self) -> bool:
        """A position_embd table added to the embeddings (gpt2) instead of RoPE."""
        return self.architecture == "gpt2"

    @property
    def embed_scale(self) -> float | None:
        """Gemma multiplies the embeddings by sqrt(d_model); None for the others."""
        return math.sqrt(self.d_model) if self.architecture == "gemma3" else None

    @property
    def attn_scale(self) -> float:
        """The factor on q.k: 1/sqrt(head_dim), except Gemma 3 27B (62 layers), which llama.cpp
        scales by 1/sqrt(d_model / n_heads)."""
        if self.architecture == "gemma3" and self.n_layers == 62:
            return 1.0 / math.sqrt(self.d_model // self.n_heads)
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def ffn_activation(self) -> str:
        """'silu' (llama, qwen2: SwiGLU), 'gelu_tanh' (gemma3's gate, gpt2) or 'gelu_erf' (converted models)."""
        if self.activation:
            return self.activation
        return "silu" if self.architecture in ("llama", "qwen2") else "gelu_tanh"

    def is_sliding(self, layer: int) -> bool:
        """gemma3: five local (sliding-window) layers, then one global, repeating (llama.cpp's swa pattern 6)."""
        return self.architecture == "gemma3" and self.sliding_window is not None and (layer + 1) % 6 != 0

    def kv_rows(self, layer: int, n_ctx: int, rewind: int) -> int:
        """Positions the KV cache keeps for a layer: n_ctx, or for a sliding-window layer a ring of its
        window plus `rewind` (how far the cache may be cut back: lookup's drafts, an edited turn)."""
        if self.is_sliding(layer):
            return min(n_ctx, self.sliding_window - 1 + rewind)
        return n_ctx

    def max_cut(self, n_ctx: int, rewind: int) -> int | None:
        """How many positions below the highest one written the cache can be cut back to (the
        position set lower, then a forward from there); None: any, every layer keeps n_ctx."""
        cuts = [self.kv_rows(i, n_ctx, rewind) - self.sliding_window + 1
                for i in range(self.n_layers) if self.kv_rows(i, n_ctx, rewind) < n_ctx]
        return min(cuts, default=None)

    def layer_rope_base(self, layer: int) -> float:
        if self.is_sliding(layer):
            return self.rope_base_local if self.rope_base_local is not None else 10000.0
        return self.rope_base

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, gguf) -> "ModelConfig":
        """The hyperparameters of a parsed GGUF file (the vocabulary size from token_embd if present)."""
        emb = gguf.tensors.get("token_embd.weight")
        return cls.from_metadata(gguf.metadata, vocab_size=emb.shape[0] if emb is not None else None)

    @classmethod
    def from_metadata(cls, metadata: dict, vocab_size: int | None = None) -> "ModelConfig":
        arch = metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ConfigError("GGUF metadata has no general.architecture string")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"architecture {arch!r} not supported (expected one of {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        values: dict = {"architecture": arch}
        for suffix, (name, required) in _KEYS.items():
            key = f"{arch}.{suffix}"
            if key not in metadata:
                if required:
                    raise ConfigError(f"GGUF metadata key {key} is missing (needed by {arch})")
                continue
            value = metadata[key]
            if isinstance(value, (list, tuple, StringTable)) or getattr(value, "ndim", 0):
                raise ConfigError(f"GGUF metadata key {key} is an array (per-layer values are not supported)")
            values[name] = value if isinstance(value, str) else _number(key, value)
        if "vocab_size" not in values:
            tokens = metadata.get("tokenizer.ggml.tokens")
            values["vocab_size"] = vocab_size if vocab_size is not None else (len(tokens) if tokens is not None else 0)
        cfg = cls(**values)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        for name in ("d_model", "n_layers", "d_ff", "n_heads", "context_length", "vocab_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{self.architecture}: {name} = {v!r} (expected a positive integer)")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"n_heads {self.n_heads} not a multiple of n_kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for RoPE")
        # Guard against absurd sizes from a hostile file before anything is allocated from them.
        if self.d_model > 1 << 16 or self.n_layers > 1 << 10 or self.n_heads > 1 << 10 or self.d_ff > 1 << 18:
            raise ConfigError(f"{self.architecture}: implausible dimensions {self}")
        if self.activation not in (None, "gelu_erf", "gelu_tanh", "silu"):
            raise ConfigError(f"activation {self.activation!r} not supported (expected gelu_erf, gelu_tanh or silu)")
        if self.rope_scaling_type not in (None, "none", "linear"):
            raise ConfigError(f"rope scaling {self.rope_scaling_type!r} not supported (expected none or linear)")


def _number(key: str, value):
    if isinstance(value, bool):
        raise ConfigError(f"GGUF metadata key {key} is a bool (expected a number)")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    try:  # numpy scalar
        return value.item()
    except AttributeError:
        raise ConfigError(f"GGUF metadata key {key} has type {type(value).__name__} (expected a number)") from None


# ---- atome: Atome LM's byte-level ternary model (forward pass in engine/atome.py) ----------------

# key suffix under "atome." -> AtomeConfig field (the keys `mote convert` writes for ATOME01 blobs)
ATOME_KEYS = {
    "embedding_length": "d_model",
    "block_count": "n_layers",
    "attention.key_length": "d_head",
    "attention.top_k": "top_k",
    "conv_kernel": "kernel",
    "vocab_size": "vocab_size",
    "context_length": "context_length",
    "attention.layer_norm_epsilon": "norm_eps",
}


@dataclass(frozen=True)
class AtomeConfig:
    """Atome LM's dimensions; the defaults are the released 944K model's (ATOME01 blobs carry none)."""

    d_model: int = 256
    n_layers: int = 8
    d_head: int = 64           # one attention head: q, k are (d_head,), v is (d_model,)
    top_k: int = 4             # keys each query attends to
    kernel: int = 5            # taps of the causal depthwise conv
    vocab_size: int = 256      # byte vocabulary
    context_length: int = 256  # the length it was trained on; attention itself has no limit
    norm_eps: float = 1e-5     # LayerNorm epsilon

    def __post_init__(self):
        for name in ("d_model", "n_layers", "d_head", "top_k", "kernel", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"atome {name}={value!r} (expected a positive integer)")
        if self.d_model > 1 << 16 or self.n_layers > 1 << 10 or self.d_head > 1 << 16 or self.vocab_size > 1 << 20:
            raise ConfigError(f"atome: implausible dimensions {self}")

    @property
    def architecture(self) -> str:
        return "atome"

    @classmethod
    def from_metadata(cls, metadata: dict) -> "AtomeConfig":
        """The `atome.*` keys of ATOME_KEYS (a missing key keeps the default)."""
        values = {}
        for suffix, name in ATOME_KEYS.items():
            key = f"atome.{suffix}"
            if key in metadata:
                value = _number(key, metadata[key])
                values[name] = float(value) if name == "norm_eps" else value
        return cls(**values)
