"""``attn_implementation="fastattn"`` in a randomly initialised small Llama: equal to a quadratic reference,
trains, generates like full recomputation, keeps padded rows' real tokens, refuses what it cannot serve."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency (pyproject [dev])")
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM  # noqa: E402

from fastattn.errors import KernelError  # noqa: E402
from fastattn.integrations.transformers import register  # noqa: E402

SPEC = "1 + x + x**2/2"


def _reference(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    # f(s q.k) over the causal pairs, normalised, with K/V repeated per query group: the quadratic definition
    G = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(G, 1), value.repeat_interleave(G, 1)
    x = scaling * query.double() @ k.double().transpose(-1, -2)
    Tq, Tk = x.shape[-2:]
    a = (1 + x + x * x / 2) * torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
    o = (a @ v.double()) / a.sum(-1, keepdim=True)
    return o.to(query.dtype).transpose(1, 2).contiguous(), None


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def names():
    AttentionInterface.register("fastattn_quadratic_reference", _reference)
    return register(SPEC, name="fastattn_test"), "fastattn_quadratic_reference"


def test_logits_equal_the_quadratic_reference_and_differ_from_softmax(names):
    ours, ref = names
    x = torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(1))
    m = _model()
    with torch.no_grad():
        # random init gives q.k ~ 0, where every f looks alike: sharpen the scores
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
        soft = m(input_ids=x).logits
        m.set_attn_implementation(ours)
        got = m(input_ids=x).logits
        m.set_attn_implementation(ref)
        want = m(input_ids=x).logits
    assert (got - want).abs().max() < 1e-4
    assert (got - soft).abs().max() > 1e-2  # the model really ran f, not softmax


def test_a_few_steps_lower_the_loss(names):
    m = _model()
    m.set_attn_implementation(names[0])
    x = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = m(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0] - 0.3, losses


def test_generate_with_the_cache_equals_full_recomputation(names):
    m = _model().eval()
    m.set_attn_implementation(names[0])
    prompt = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = m.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
        seq = prompt
        for _ in range(8):
            nxt = m(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert out.tolist() == seq.tolist()


def test_left_padding_leaves_real_tokens_unchanged(names):
    m = _model().eval()
    m.set_attn_implementation(names[0])
    x = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :7] = 0
    with torch.no_grad():
        padded = m(input_ids=x, attention_mask=mask).logits[1, 7:]
        alone = m(input_ids=x[1:, 7:]).logits[0]
    # RoPE makes q.k depend on relative positions only, so the shift by 7 changes nothing
    assert (padded - alone).abs().max() < 1e-4


def test_refusals_name_the_problem(names):
    from fastattn.integrations.transformers import attention_function

    fn = attention_function(SPEC)
    q = k = v = torch.randn(1, 2, 5, 4)
    layer = torch.nn.Module()
    with pytest.raises(KernelError, match="4-D"):
        fn(layer, q, k, v, torch.zeros(1, 1, 5, 5), scaling=0.5)
    with pytest.raises(KernelError, match="chunked prefill"):
        fn(layer, q[:, :, :2], k, v, None, scaling=0.5, is_causal=True)
    layer.train()
    with pytest.raises(KernelError, match="dropout"):
        fn(layer, q, k, v, None, dropout=0.1, scaling=0.5)
    with pytest.raises(KernelError, match="identifier"):
        register(SPEC, name="not a name")
