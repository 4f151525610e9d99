"""fastattn as a Hugging Face ``transformers`` attention implementation (``attn_implementation="fastattn"``).

:func:`register` puts an attention function for a spec into transformers' ``AttentionInterface``
and a matching mask function into its ``AttentionMaskInterface``, so a Llama / Mistral / Qwen-style
model (any model whose attention calls ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``)
runs f(s q.k) in place of softmax for training and prefill:

* causal self-attention with grouped-query heads (``enable_gqa``, no K/V copy on the torch path);
* a 2-D padding mask (``attention_mask`` of the tokenizer, 1 = real token) becomes
  ``key_padding_mask``: padded keys change no real token's output;
* decoding through transformers' own KV cache: a one-token query attends over every cached key
  (exact, but it recomputes the prefix's features each step: O(T) per token. Constant-time decoding
  needs the carried state, :meth:`fastattn.attention.FastAttention.step` / ``use_cache`` of
  :class:`fastattn.attention.FastMultiheadAttention`; see ``examples/generate.py``).

What is refused with an error instead of a silently different model: a 4-D or float mask (a custom
mask transformers built for another implementation), a sliding-window / bidirectional / packed mask
function, several new queries on top of a cache (chunked prefill), and attention dropout in training.

transformers is optional: importing this module does not import it; :func:`register` does.

Examples
--------
>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> name = register("1 + x + x**2/2")
>>> cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
...                   num_attention_heads=4, num_key_value_heads=2)
>>> model = LlamaForCausalLM(cfg)
>>> model.set_attn_implementation(name)
>>> model(input_ids=torch.randint(0, 128, (1, 10))).logits.shape
torch.Size([1, 10, 128])
"""

from __future__ import annotations

import torch

from fastattn.errors import KernelError

__all__ = ["register", "attention_function"]


def attention_function(spec="1 + x + x**2/2", *, normalize: bool = True, normalizer_fix=None, degree=None,
                       backend: str = "auto"):
    """An attention function with transformers' signature for the polynomial attention of ``spec``.

    ``fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs)``
    takes [B, H, T, D] tensors (key/value with H_kv heads) and returns ``(out [B, T, H, DV], None)``.

    Examples
    --------
    >>> import torch
    >>> fn = attention_function("1 + x + x**2/2")
    >>> q = k = v = torch.randn(1, 2, 5, 4)
    >>> out, weights = fn(torch.nn.Module(), q, k, v, None, scaling=0.5)
    >>> out.shape, weights
    (torch.Size([1, 5, 2, 4]), None)
    """
    from fastattn.attention.functional import fast_attention

    def fastattn_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                           **kwargs):
        if dropout and getattr(module, "training", False):
            raise KernelError(f"fastattn: attention dropout {dropout} has no meaning without attention weights; "
                              "set the config's attention_dropout to 0")
        if kwargs.get("output_attentions"):
            raise KernelError("fastattn: output_attentions=True is not possible, a linear attention forms no "
                              "attention weights")
        Tq, Tk = query.shape[2], key.shape[2]
        causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
        padding = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.dtype != torch.bool:
                raise KernelError(f"fastattn: got a {attention_mask.dim()}-D {attention_mask.dtype} attention mask; "
                                  "only the 2-D padding mask of fastattn's mask function is understood (register "
                                  "the implementation with fastattn.integrations.transformers.register)")
            padding = ~attention_mask[:, -Tk:]
        if causal and Tq != Tk:
            if Tq != 1:
                raise KernelError(f"fastattn: {Tq} new queries over a cache of {Tk} keys (chunked prefill) is not "
                                  "supported; prefill the prompt in one call, then decode one token per call")
            # the newest token sees every cached key: non-causal over the cache is exact here
            causal = False
        o = fast_attention(query, key, value, spec, is_causal=causal, scale=scaling, normalize=normalize,
                           enable_gqa=query.shape[1] != key.shape[1], key_padding_mask=padding,
                           normalizer_fix=normalizer_fix, degree=degree, backend=backend)
        return o.transpose(1, 2).contiguous(), None

    return fastattn_attention


def _padding_mask_function(batch_size, q_length=None, kv_length=None, q_offset=0, kv_offset=0, mask_function=None,
                           attention_mask=None, local_size=None, **kwargs):
    """transformers' mask hook: None without padding, else the 2-D bool mask of real keys [B, kv_length]."""
    from transformers.masking_utils import causal_mask_function

    if local_size is not None or (mask_function is not None and mask_function is not causal_mask_function):
        name = getattr(mask_function, "__name__", repr(mask_function))
        raise KernelError(f"fastattn: the model asks for a {name!r} mask (sliding window, bidirectional or packed "
                          "sequences); fastattn serves causal attention with an optional padding mask only")
    if attention_mask is None:
        return None
    real = attention_mask.to(torch.bool)
    real = real[:, kv_offset:kv_offset + kv_length] if kv_length is not None else real
    return None if bool(real.all()) else real


def register(spec="1 + x + x**2/2", name: str = "fastattn", **options) -> str:
    """Register ``spec``'s attention under ``name`` in transformers' attention and mask interfaces.

    Parameters
    ----------
    spec : str, Spec, dict or Polynomial
        f, as for :func:`fastattn.attention.fast_attention`.
    name : str
        The ``attn_implementation`` to use: ``from_config(cfg, attn_implementation=name)`` or
        ``model.set_attn_implementation(name)``.
    **options
        ``normalize``, ``normalizer_fix``, ``degree``, ``backend`` of :func:`attention_function`.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    KernelError
        When transformers is missing or too old to have ``AttentionInterface``.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as exc:
        raise KernelError(f"fastattn.integrations.transformers needs transformers >= 4.53 with AttentionInterface "
                          f"and AttentionMaskInterface ({exc}); pip install -U transformers") from None
    if not isinstance(name, str) or not name.isidentifier():
        raise KernelError(f"name={name!r} must be an identifier-like string, e.g. 'fastattn'")
    AttentionInterface.register(name, attention_function(spec, **options))
    AttentionMaskInterface.register(name, _padding_mask_function)
    return name
