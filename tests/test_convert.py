"""`mote convert`: PyTorch GPT checkpoints (the vanilla 1M against shared/reference/vanilla-1m.json,
made by Atome LM's own PyTorch code) and Hugging Face safetensors folders (tiny random llama, qwen2,
gemma3 and gpt2 models built here with `transformers`; logits compared with its forward pass)."""

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.generate import SamplingParams, generate
from engine.gguf import open_gguf
from mote.cli import main as mote
from mote.convert import ConvertError, convert_torch_gpt
from mote.loader import load
from tests.paths import REFERENCE, SHARED, shared_file

VANILLA_PT = SHARED / "atome" / "vanilla_1m_v1.pt"


# ---- PyTorch GPT (pickle) -------------------------------------------------------------------------


def test_pickle_is_refused_without_allow_pickle(tmp_path, capsys):
    src = shared_file("atome/vanilla_1m_v1.pt")
    out = tmp_path / "v.gguf"
    assert mote(["convert", str(src), str(out)]) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert not out.exists()


def test_weights_only_load_refuses_a_pickle_that_runs_code(tmp_path):
    """A pickle whose payload calls os.system is rejected by torch's weights-only unpickler in the
    child process, and the payload never runs."""
    pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    code = ("import os, pickle\n"
            "class E:\n"
            f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
            f"pickle.dump({{'state_dict': E()}}, open({str(evil)!r}, 'wb'))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(ConvertError, match="weights_only"):
        convert_torch_gpt(evil, tmp_path / "e.gguf", allow_pickle=True)
    assert not marker.exists()


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory):
    pytest.importorskip("torch", reason="converting the .pt checkpoint needs torch (dev extra)")
    src = shared_file("atome/vanilla_1m_v1.pt")
    out = tmp_path_factory.mktemp("vanilla") / "vanilla-1m.gguf"
    assert mote(["convert", str(src), str(out), "--allow-pickle"]) == 0
    return out


def test_vanilla_gguf_layout(vanilla):
    g = open_gguf(vanilla)
    md = g.metadata
    assert md["general.architecture"] == "gpt2" and md["gpt2.mote.activation"] == "gelu_erf"
    assert md["gpt2.embedding_length"] == 152 and md["gpt2.block_count"] == 3
    assert md["gpt2.attention.head_count"] == 4 and md["gpt2.feed_forward_length"] == 608
    assert md["gpt2.context_length"] == 256 and md["tokenizer.ggml.model"] == "bytes"
    n_params = sum(math.prod(t.shape) for t in g.tensors.values())
    train = json.loads((SHARED / "atome" / "vanilla_1m_v1.train.json").read_text())
    assert n_params == train["params"] == 950608


def test_vanilla_gguf_is_read_by_gguf_package(vanilla):
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(vanilla))
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "position_embd.weight", "blk.2.attn_qkv.weight", "output.weight"} <= names


def test_vanilla_reproduces_reference_logits_and_greedy(vanilla):
    """shared/reference/vanilla-1m.json: last-position logits within 1e-4, greedy tokens identical."""
    ref = json.loads((REFERENCE / "vanilla-1m.json").read_text())
    loaded = load(vanilla)
    for prompt, r in ref["prompts"].items():
        assert loaded.tokenizer.encode(prompt) == r["prompt_tokens"]
        loaded.model.reset()
        logits = loaded.model.forward(r["prompt_tokens"])  # (256,)
        np.testing.assert_allclose(logits, r["last_logits"], atol=1e-4, rtol=0)
        events = generate(loaded.model, loaded.tokenizer, r["prompt_tokens"],
                          SamplingParams(temperature=0, max_tokens=len(r["greedy_tokens"])))
        tokens = [e.token_id for e in events if e.kind == "token"]
        assert tokens == r["greedy_tokens"], (prompt, bytes(tokens))


def test_vanilla_generate_cli(vanilla, capsys):
    assert mote(["generate", str(vanilla), "-p", "Once upon a time", "-n", "20", "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = json.loads((REFERENCE / "vanilla-1m.json").read_text())["prompts"]["Once upon a time"]
    assert out["tokens"] == ref["greedy_tokens"][:20]
    assert out["text"] == ref["greedy_text"][:20]


# A PyTorch forward written here from the checkpoint's state_dict (GPT: learned positions,
# pre-LayerNorm, fused qkv, exact GELU): the oracle for prompts the reference file does not hold.
@functools.lru_cache(maxsize=1)
def _torch_state():
    import torch

    ck = torch.load(str(VANILLA_PT), map_location="cpu", weights_only=True)
    return ck["state_dict"], ck["config"]


def torch_vanilla_logits(ids) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    sd, cfg = _torch_state()
    d, h = cfg["d_model"], cfg["n_heads"]
    with torch.no_grad():
        t = torch.tensor(ids)[None]
        n = t.shape[1]
        x = sd["tok_embed.weight"][t] + sd["pos_embed.weight"][:n][None]
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        for i in range(cfg["n_layers"]):
            p = f"blocks.{i}."
            y = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])
            q, k, v = (y @ sd[p + "attn.qkv.weight"].T).split(d, dim=-1)
            q, k, v = (z.reshape(1, n, h, d // h).transpose(1, 2) for z in (q, k, v))
            a = (q @ k.transpose(-1, -2) / math.sqrt(d // h)).masked_fill(~mask, float("-inf")).softmax(-1)
            x = x + (a @ v).transpose(1, 2).reshape(1, n, d) @ sd[p + "attn.out.weight"].T
            y = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
            x = x + F.gelu(y @ sd[p + "ffn.up.weight"].T) @ sd[p + "ffn.down.weight"].T
        x = F.layer_norm(x, (d,), sd["norm_final.weight"], sd["norm_final.bias"])
        return (x @ sd["unembed.weight"].T)[0].numpy()


def test_vanilla_matches_torch_on_unseen_prompts(vanilla):
    pytest.importorskip("torch")
    loaded = load(vanilla)
    for text in ["The cat sat on the mat and", "Lily and Ben went to the park. They saw a big red ball.", "Z"]:
        ids = list(text.encode())
        loaded.model.reset()
        ours = loaded.model.forward(ids, all_logits=True)  # (n, 256)
        np.testing.assert_allclose(ours, torch_vanilla_logits(ids), atol=1e-4, rtol=0)


# ---- Hugging Face safetensors folders ------------------------------------------------------------

TEXTS = ["Once upon a time, there was a little cat named Tom.",
         "The dog ran to the park!  It was happy.\nThen it slept.",
         "Zebra quiz: 12345 jumps, été naïve ✓"]  # unseen characters: byte fallback / byte-level


@functools.lru_cache(maxsize=None)
def _corpus() -> str:
    return shared_file("atome/tinystories_sample.txt").read_text()[:30000]


def _bytelevel_tokenizer():
    """A GPT-2-style byte-level BPE trained here on TinyStories text (400 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([_corpus()], trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]))
    return tok


def _spm_tokenizer(prefix: bool):
    """A SentencePiece-style BPE (spaces as U+2581, byte fallback; Llama 2 with `prefix`, Gemma without)."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True))
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(_corpus().splitlines(), trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    return tok


def _hf_model(arch: str, vocab: int):
    import torch
    import transformers as T

    torch.manual_seed(0)
    if arch == "llama":
        cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=2, eos_token_id=1)
        model = T.LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = T.Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            tie_word_embeddings=True)
        model = T.Qwen2ForCausalLM(cfg)
    elif arch == "gemma3":
        cfg = T.Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=7,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
                                 sliding_window=8, max_position_embeddings=128, bos_token_id=2, eos_token_id=1,
                                 pad_token_id=0)
        model = T.Gemma3ForCausalLM(cfg)
    else:
        cfg = T.GPT2Config(vocab_size=vocab, n_positions=128, n_embd=64, n_layer=2, n_head=4)
        model = T.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # random weights big enough that the logits differ by whole units
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


HF_CASES = {  # arch -> tokenizer kind
    "llama": "spm-prefix", "qwen2": "bytelevel", "gemma3": "spm", "gpt2": "bytelevel",
}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    pytest.importorskip("transformers", reason="the safetensors import tests build models with transformers")
    made = {}

    def get(arch):
        if arch not in made:
            tok = {"bytelevel": _bytelevel_tokenizer, "spm": lambda: _spm_tokenizer(False),
                   "spm-prefix": lambda: _spm_tokenizer(True)}[HF_CASES[arch]]()
            folder = tmp_path_factory.mktemp(f"hf-{arch}")
            model = _hf_model(arch, tok.get_vocab_size())
            model.save_pretrained(folder)
            tok.save(str(folder / "tokenizer.json"))
            out = folder.parent / f"{arch}.gguf"
            assert mote(["convert", str(folder), str(out)]) == 0
            made[arch] = (model, tok, folder, out)
        return made[arch]

    return get


@pytest.mark.parametrize("arch", list(HF_CASES))
def test_hf_import_matches_transformers_logits(hf_models, arch):
    import torch

    model, tok, folder, out = hf_models(arch)
    loaded = load(out)
    assert loaded.model.config.architecture == arch
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert loaded.tokenizer.encode(text, add_bos=False) == ids, text  # same tokens as tokenizers
        assert loaded.tokenizer.decode(ids) == text or HF_CASES[arch].startswith("spm")
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()  # (n, vocab)
        loaded.model.reset()
        ours = loaded.model.forward(ids, all_logits=True)
        assert np.abs(ref).max() > 1.0  # not a trivially small comparison
        np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_hf_import_f16_and_gguf_package(hf_models, tmp_path):
    gguf = pytest.importorskip("gguf")
    _, _, folder, _ = hf_models("llama")
    out = tmp_path / "llama-f16.gguf"
    assert mote(["convert", str(folder), str(out), "--type", "f16"]) == 0
    r = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert str(bytes(r.fields["tokenizer.ggml.model"].parts[-1]), "utf-8") == "llama"


def test_llama_rope_permutation_is_needed(hf_models, tmp_path):
    """Without the Q/K row permutation the llama logits are wrong: the test above can fail."""
    import torch

    from mote import convert as conv

    model, tok, folder, _ = hf_models("llama")
    saved = conv.permute_rope_rows
    conv.permute_rope_rows = lambda w, n: w
    try:
        out = tmp_path / "unpermuted.gguf"
        conv.convert_hf(folder, out)
    finally:
        conv.permute_rope_rows = saved
    ids = tok.encode(TEXTS[0]).ids
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(load(out).model.forward(ids, all_logits=True) - ref).max() > 1e-2


def test_hf_folder_errors(tmp_path):
    with pytest.raises(ConvertError, match="config.json"):
        from mote.convert import convert_hf

        convert_hf(tmp_path, tmp_path / "x.gguf")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ConvertError, match="mamba"):
        convert_hf(tmp_path, tmp_path / "x.gguf")


# ---- hostile safetensors files (shared/research/security.md §1.3) ---------------------------------


def _st(header, data: bytes = b"", raw_header: bytes | None = None, length: int | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    import struct

    return struct.pack("<Q", len(h) if length is None else length) + h + data


def _f32(n):
    return {"dtype": "F32", "shape": [n], "data_offsets": None}


def test_valid_safetensors_round_trip_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from mote.safetensors import open_safetensors

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16),
              "empty": np.zeros((0, 3), np.float32)}
    st.save_file(arrays, str(tmp_path / "x.safetensors"), metadata={"format": "np"})
    f = open_safetensors(tmp_path / "x.safetensors")
    assert f.metadata == {"format": "np"}
    for k, v in arrays.items():
        np.testing.assert_array_equal(f.as_float32(k), v.astype(np.float32))


def test_bf16_widening():
    from mote.safetensors import SafetensorsFile

    x = np.array([1.5, -2.25, 3e38], dtype=np.float32)
    bf = (x.view(np.uint32) >> 16).astype("<u2").tobytes()
    f = SafetensorsFile(_st({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, bf))
    np.testing.assert_array_equal(f.as_float32("w"), (x.view(np.uint32) & 0xFFFF0000).view(np.float32))


HOSTILE = {
    "shorter than 8 bytes": (b"\x01\x02", "at least"),
    "header length huge": (_st({}, length=2**63), "exceeds"),
    "header length past the end": (_st({}, length=1000), "past the end"),
    "header not UTF-8": (_st(None, raw_header=b"{\xff}"), "UTF-8"),
    "header not JSON": (_st(None, raw_header=b"{nope"), "not valid JSON"),
    "header not an object": (_st(None, raw_header=b"[1, 2]"), "start with"),
    "duplicate key": (_st(None, raw_header=b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                                           b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', data=b"x"),
                      "twice"),
    "NaN literal": (_st(None, raw_header=b'{"a": NaN}'), "constant"),
    "deep nesting": (_st(None, raw_header=b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"), "JSON"),
    "unknown dtype": (_st({"w": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"x"), "dtype"),
    "dtype a list (found by scripts/fuzz.py)": (_st({"w": {"dtype": [], "shape": [1], "data_offsets": [0, 1]}}, b"x"),
                                                "dtype"),
    "dtype an object": (_st({"w": {"dtype": {"a": 1}, "shape": [1], "data_offsets": [0, 1]}}, b"x"), "dtype"),
    "missing field": (_st({"w": {"dtype": "F32", "shape": [1]}}, b"xxxx"), "exactly"),
    "negative dim": (_st({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"x"), "negative"),
    "float dim": (_st({"w": {"dtype": "U8", "shape": [1.0], "data_offsets": [0, 1]}}, b"x"), "integer"),
    "offsets out of range": (_st({"w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, b"x"), "outside"),
    "offsets reversed": (_st({"w": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}, b"x"), "start <= end"),
    "shape/offset mismatch": (_st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"xxxx"), "needs 8"),
    "shape product overflow": (_st({"w": {"dtype": "F32", "shape": [2**32, 2**32, 2**32], "data_offsets": [0, 4]}},
                                   b"xxxx"), "needs"),
    "overlapping tensors": (_st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                 "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"x" * 6), "overlaps"),
    "aliased tensors": (_st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                             "b": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"x" * 4), "overlaps"),
    "hole between tensors": (_st({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                                  "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}}, b"x" * 6), "hole"),
    "trailing bytes (polyglot)": (_st({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"x" * 9),
                                  "use 2"),
    "bad metadata": (_st({"__metadata__": {"k": 1}}), "strings"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_safetensors_is_a_clear_error(case):
    from mote.safetensors import SafetensorsError, SafetensorsFile

    data, message = HOSTILE[case]
    with pytest.raises(SafetensorsError, match=message):
        SafetensorsFile(data)


def test_hostile_safetensors_through_convert(tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
        "intermediate_size": 16, "max_position_embeddings": 16, "vocab_size": 4}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [],
                                                                 "byte_fallback": True}}))
    (folder / "model.safetensors").write_bytes(HOSTILE["overlapping tensors"][0])
    assert mote(["convert", str(folder), str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "overlaps" in err


def test_unknown_file_is_refused_by_magic_not_extension(tmp_path, capsys):
    src = tmp_path / "weights.pt"
    src.write_bytes(b"\x93NUMPY\x01\x00" + b"\0" * 64)  # a .npy with a .pt name
    assert mote(["convert", str(src), str(tmp_path / "x.gguf"), "--allow-pickle"]) == 1
    assert "not a folder with config.json" in capsys.readouterr().err
