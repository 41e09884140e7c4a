"""SmolLM2-135M loaded into TinyLM equals transformers' LlamaForCausalLM loaded from the same GGUF.

One model of each kind is loaded per session (module-scoped fixtures: about 10 s each)."""
from __future__ import annotations

import pytest
import torch

from tinymoe.pretrained import GGUFTokenizer, load_gguf_model, read_gguf, smollm2_path

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

PROMPTS = ["The quick brown fox", "def fibonacci(n):\n    if n < 2:", "Paris is the capital of"]
FRANCE = "What is the capital of France?"
# float32 through 30 layers: the two implementations sum in different orders. Measured here:
# max |difference| 7e-5 on logits of magnitude up to 41; the bound adds a relative 1e-5 so that
# another CPU's rounding (another BLAS kernel) cannot fail a correct model.
ATOL, RTOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def gguf_file():
    return read_gguf()


@pytest.fixture(scope="module")
def ours(gguf_file):
    return load_gguf_model(gguf_file, max_seq_len=512)


@pytest.fixture(scope="module")
def tokenizer(gguf_file):
    return GGUFTokenizer(gguf_file)


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")                    # transformers needs it to read GGUF
    path = smollm2_path()
    return transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                         dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference_tokenizer():
    transformers = pytest.importorskip("transformers")
    path = smollm2_path()
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_config_comes_from_the_files_metadata(ours):
    c = ours.config
    got = (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.kv_heads, c.qk_dim, c.ff_dim, c.rope_base,
           c.tie_embeddings)
    assert got == (49152, 576, 30, 9, 3, 64, 1536, 100000.0, True), f"config read from the GGUF: {got}"
    n = sum(p.numel() for p in ours.parameters())
    assert n == 134_515_008, f"SmolLM2-135M has 134,515,008 parameters (tied embeddings); TinyLM has {n:,}"


@pytest.mark.parametrize("prompt", PROMPTS + ["chat"])
def test_logits_equal_transformers_llama(ours, reference, tokenizer, prompt):
    text = tokenizer.apply_chat_template([{"role": "user", "content": FRANCE}]) if prompt == "chat" else prompt
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        a, b = ours(ids).logits, reference(ids).logits
    err = (a - b).abs().max().item()
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL,
                               msg=lambda m: f"TinyLM vs LlamaForCausalLM logits on {text[:30]!r}: max error {err:.2e}\n{m}")


def test_interleaved_pairing_with_the_files_row_order_gives_the_same_logits(ours, gguf_file, tokenizer):
    interleaved = load_gguf_model(gguf_file, rope_pairing="interleaved", max_seq_len=64)
    ids = torch.tensor([tokenizer.encode(PROMPTS[1])])
    with torch.no_grad():
        a, b = ours(ids).logits, interleaved(ids).logits
    torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL,
                               msg=lambda m: f"keeping llama.cpp's q/k row order with interleaved RoPE should "
                                             f"equal undoing it with rotate_half\n{m}")


def test_greedy_generation_matches_transformers_for_32_tokens(ours, reference, tokenizer):
    ids = torch.tensor([tokenizer.encode(PROMPTS[1])])
    mine = ours.generate(ids, max_new_tokens=32)[0, ids.shape[1]:].tolist()
    theirs = reference.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None,
                                pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
    assert mine == theirs, (f"greedy tokens differ at step {next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)}:\n"
                            f"  TinyLM: {tokenizer.decode(mine)!r}\n  HF:     {tokenizer.decode(theirs)!r}")


def test_the_france_prompt_answers_paris(ours, tokenizer):
    ids = torch.tensor([tokenizer.chat_ids(FRANCE)])
    answer = tokenizer.decode(ours.generate(ids, max_new_tokens=10)[0, ids.shape[1]:], skip_special_tokens=True)
    assert answer.startswith("The capital of France is Paris"), f"the model answered {answer!r}"


@pytest.mark.parametrize("text", ["Hello world!", "  two  spaces\n\nnewlines\ttabs", "café naïve — “quotes” 東京",
                                  "def f(x):\n    return x**2", "Year 2024 and 3.14159",
                                  "<|im_start|>user\nhi<|im_end|>\n"])
def test_tokenizer_equals_transformers_gguf_tokenizer_and_round_trips(tokenizer, reference_tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids == reference_tokenizer.encode(text, add_special_tokens=False), f"token ids differ for {text!r}"
    assert tokenizer.decode(ids) == text, f"decode(encode(text)) != text for {text!r}"


def test_chat_template_equals_transformers(tokenizer, reference_tokenizer):
    messages = [{"role": "user", "content": FRANCE}]
    ours = tokenizer.apply_chat_template(messages)
    theirs = reference_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours == theirs, f"chat text differs:\n{ours!r}\n{theirs!r}"


def test_careless_calls_name_the_argument(tokenizer):
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode(123)
    with pytest.raises(ValueError, match="ids"):
        tokenizer.decode([10**6])
    with pytest.raises(TypeError, match="messages"):
        tokenizer.apply_chat_template("hello")
    with pytest.raises(FileNotFoundError, match="path"):
        read_gguf("/no/such/file.gguf")


def test_moefied_real_model_with_every_expert_equals_the_dense_model(ours, gguf_file, tokenizer):
    from tinymoe.moefication import moefy
    model = load_gguf_model(gguf_file, max_seq_len=64)            # a second copy (tensors cached)
    moefy(model, n_experts=16)
    ids = torch.tensor([tokenizer.encode(PROMPTS[0])])
    with torch.no_grad():
        a, b = model(ids).logits, ours(ids).logits
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL,
                               msg=lambda m: f"SmolLM2 with its MLPs split into 16 experts, all active, "
                                             f"should equal the dense model\n{m}")


def test_benchmark_runs_and_both_libraries_generate_the_same_tokens(ours, reference, tokenizer):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pretrained.py"
    spec = importlib.util.spec_from_file_location("bench_pretrained", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.run(quick=True, repeats=1, models=(ours, reference, tokenizer))
    assert r["same_tokens"], "TinyLM and transformers generated different greedy tokens in the benchmark"
    assert r["prefill_ratio"] > 0 and r["generate_ratio"] > 0, r
