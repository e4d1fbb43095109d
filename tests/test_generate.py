"""Fast generation (GPT.generate's float32 path: prefill on the training kernels, then one C++
decode step per token over in-place key/value caches, csrc/ops/decode.h): greedy and sampled
tokens equal the full recomputation without a cache, for learned and rotary positions, GQA,
untied heads, no biases, contexts that outgrow block_size, on every ISA path; batched prompts
of different lengths equal one prompt at a time; bf16 weights; a GPT-2 checkpoint against
transformers' greedy output (where installed); the decode step's logits against the forward."""
import numpy as np
import pytest

from fusegrad import _C
from fusegrad.lm import perplexity
from fusegrad.models import GPT, GPTConfig
from fusegrad.tensor import no_grad

TINY = dict(vocab_size=41, block_size=12, n_layer=2, n_head=4, n_embd=16)
VARIANTS = {
    "learned": dict(),
    "rope-gqa-untied": dict(pos="rope", n_kv_head=1, tie_weights=False),
    "nobias-gqa": dict(bias=False, n_kv_head=2),
    "rope-gqa-odd": dict(pos="rope", n_head=3, n_kv_head=3, n_embd=18, vocab_size=37),
}


def _model(var, seed=0, scale=0.3):
    model = GPT(GPTConfig(**{**TINY, **VARIANTS[var]}), seed=seed)
    r = np.random.default_rng(seed + 1)
    for n, p in model.named_parameters():  # non-trivial values everywhere (gains and biases too)
        base = 1.0 if "ln_" in n and n.endswith("weight") else 0.0
        p.data[...] = base + scale * r.standard_normal(p.shape)
    return model


@pytest.mark.parametrize("var", VARIANTS)
def test_fast_decode_equals_full_recompute(isa, threads, var):
    threads(1 if var != "learned" else 2)   # the recomputation forks per kernel: slow on a busy machine
    model = _model(var)
    idx = np.random.default_rng(3).integers(0, model.config.vocab_size, (3, 5))
    # 5 + 14 tokens outgrow block_size 12: both paths crop the context and recompute
    for kw in [dict(temperature=0), dict(temperature=0.9, top_k=7, seed=1), dict(temperature=1.1, top_p=0.8, seed=2)]:
        fast = model.generate(idx, 14, **kw)
        slow = model.generate(idx, 14, use_cache=False, **kw)
        np.testing.assert_array_equal(fast, slow, err_msg=str(kw))


@pytest.mark.parametrize("var", ["learned", "rope-gqa-untied", "rope-gqa-untied-bf16"])
def test_decode_step_logits_match_the_forward(isa, var):
    model = _model(var.removesuffix("-bf16"), scale=0.2)
    if var.endswith("-bf16"):      # the decode steps on bf16 weights (gemv_bf16) vs the forward on their values
        model = model.to_inference("bfloat16")
    c = model.config
    idx = np.random.default_rng(4).integers(0, c.vocab_size, (2, 10))
    with no_grad():
        full = model(idx)[0].data                                         # (2, 10, V)
        shape = (2, c.n_kv_head, c.block_size, c.head_dim)
        caches = [[np.empty(shape, np.float32), np.empty(shape, np.float32)] for _ in range(c.n_layer)]
        dec = model._decoder(caches)
        # row 0 prefilled with 3 tokens, row 1 with 6: rows at different positions in one step
        first = model._prefill([idx[0, :3], idx[1, :6]], caches)
        np.testing.assert_allclose(first, full[[0, 1], [2, 5]], rtol=1e-5, atol=1e-5)
        pos = np.array([3, 6])
        while pos[1] < 10:
            got = dec.step(idx[[0, 1], pos], pos.copy())
            np.testing.assert_allclose(got, full[[0, 1], pos], rtol=1e-5, atol=1e-5)
            pos += 1


@pytest.mark.parametrize("var", ["learned", "rope-gqa-untied", "nobias-gqa"])
def test_batched_prompts_of_different_lengths_equal_one_at_a_time(isa, threads, var):
    threads(1 if var != "learned" else 2)
    model = _model(var)
    V = model.config.vocab_size
    r = np.random.default_rng(5)
    prompts = [r.integers(0, V, n) for n in (1, 6, 3, 11)]
    T = max(len(p) for p in prompts)
    idx = np.zeros((len(prompts), T), dtype=np.int64)                      # left padding (pad id 0)
    mask = np.zeros_like(idx)
    for b, p in enumerate(prompts):
        idx[b, T - len(p):] = p
        mask[b, T - len(p):] = 1
    for use_cache in (True, False):
        out = model.generate(idx, 9, temperature=0, attention_mask=mask, use_cache=use_cache)
        assert out.shape == (4, T + 9)
        np.testing.assert_array_equal(out[:, :T], idx)                     # padding kept as given
        for b, p in enumerate(prompts):
            one = model.generate(p[None], 9, temperature=0, use_cache=use_cache)
            np.testing.assert_array_equal(out[b, T - len(p):], one[0], err_msg=f"row {b} cache={use_cache}")


def test_bf16_weights(isa):
    model = _model("rope-gqa-untied", scale=0.2)
    m16 = model.to_inference("bfloat16")
    for name, bits in m16._bf16.items():                                   # the float32 arrays hold bf16 values
        assert bits.dtype == np.uint16
    w = m16.blocks[0].attn.c_attn.weight.data
    np.testing.assert_array_equal(w, _C._bf16_to_float32(_C._bf16_from_float32(w)))
    assert not np.array_equal(w, model.blocks[0].attn.c_attn.weight.data)  # the original is untouched
    idx = np.random.default_rng(6).integers(0, model.config.vocab_size, (2, 4))
    fast = m16.generate(idx, 10, temperature=0)
    np.testing.assert_array_equal(fast, m16.generate(idx, 10, temperature=0, use_cache=False))
    np.testing.assert_array_equal(fast, model.generate(idx, 10, temperature=0, weights_dtype="bfloat16"))
    # bf16 rounding moves the logits by ~2^-9 relative; the loss barely
    tgt = np.random.default_rng(7).integers(0, model.config.vocab_size, idx.shape)
    l32, l16 = float(model(idx, tgt)[1].data), float(m16(idx, tgt)[1].data)
    assert abs(l16 - l32) < 0.01 * abs(l32)


def test_bf16_perplexity_change_within_the_rounding_bound(isa):
    # |L_bf16 - L_f32| <= 2 u sum_w |dL/dw| |w|, u = 2^-8 (bf16's 8-bit significand): rounding moves each weight by <= u|w|, first order in L, doubled for the rest
    model = _model("rope-gqa-untied", scale=0.2)
    c = model.config
    ids = np.random.default_rng(8).integers(0, c.vocab_size, 8 * c.block_size + 1)
    m16 = model.to_inference("bfloat16")
    w = ids[np.arange(8)[:, None] * c.block_size + np.arange(c.block_size + 1)]   # the windows perplexity() takes
    loss = model(w[:, :-1], w[:, 1:])[1]
    loss.backward()
    params = dict(model.named_parameters())
    rounded = {n: params["lm_head.weight" if n == "head" else n + ".weight"] for n in m16._bf16}
    assert len(rounded) == 4 * c.n_layer + 1
    first_order = sum(float(np.abs(p.grad.data.astype(np.float64) * p.data).sum()) for p in rounded.values())
    bound = 2 * 2.0 ** -8 * first_order
    p32, p16 = perplexity(model, ids), perplexity(m16, ids)
    assert np.isclose(np.log(p32), float(loss.data), rtol=1e-6)
    assert p16 != p32 and abs(np.log(p16) - np.log(p32)) <= bound, (p32, p16, bound)


def test_float64_models_and_threads_take_the_python_path():
    model = _model("learned")
    m64 = GPT(model.config, dtype=np.float64, seed=0)
    m64.load_state_dict({k: v.data.astype(np.float64) for k, v in model.state_dict().items()})
    idx = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(m64.generate(idx, 6, temperature=0), m64.generate(idx, 6, temperature=0, use_cache=False))


@pytest.mark.slow
def test_gpt2_checkpoint_greedy_equals_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():                                                  # sharper logits: fewer near-ties
        for p in hf.parameters():
            p.mul_(4.0)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = GPT.from_pretrained(tmp_path)
    idx = np.random.default_rng(8).integers(0, 97, (2, 7))
    ours = model.generate(idx, 20, temperature=0)
    ref = hf.generate(torch.from_numpy(idx), attention_mask=torch.ones(idx.shape, dtype=torch.long),
                      max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_generate_bad_generation_arguments():
    model = _model("learned")
    idx = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"attention_mask must have idx's shape \(1, 3\)"):
        model.generate(idx, 2, attention_mask=np.ones((1, 2)))
    with pytest.raises(ValueError, match="attention_mask must hold 0"):
        model.generate(idx, 2, attention_mask=np.array([[0, 2, 1]]))
    with pytest.raises(ValueError, match="must be left padding"):
        model.generate(idx, 2, attention_mask=np.array([[1, 1, 0]]))
    with pytest.raises(ValueError, match="row 0 has no tokens"):
        model.generate(idx, 2, attention_mask=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="weights_dtype must be"):
        model.generate(idx, 2, weights_dtype="int4")
    with pytest.raises(ValueError, match="to_inference: weights_dtype"):
        model.to_inference("float16")
    with pytest.raises(TypeError, match="to_inference: needs a float32 model"):
        GPT(model.config, dtype=np.float64).to_inference()
    c = model.config
    shape = (1, c.n_kv_head, c.block_size, c.head_dim)
    dec = model._decoder([[np.empty(shape, np.float32), np.empty(shape, np.float32)] for _ in range(c.n_layer)])
    with pytest.raises(ValueError, match=r"GptDecoder.step: pos must be in \[0, 12\)"):
        dec.step(np.array([1]), np.array([12]))
    with pytest.raises(ValueError, match=r"GptDecoder.step: ids must be in \[0, 41\)"):
        dec.step(np.array([41]), np.array([0]))
    with pytest.raises(ValueError, match=r"GptDecoder.step: batch must be 1..1"):
        dec.step(np.array([1, 2]), np.array([0, 0]))
    with pytest.raises(ValueError, match=r"GptDecoder: layers\[0\].k_cache must have shape"):
        model._decoder([[np.empty((1, c.n_kv_head, c.block_size, 1), np.float32)] * 2 for _ in range(c.n_layer)])
