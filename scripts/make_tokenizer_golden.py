"""Regenerate the tokenizer goldens in tests/data/ with llama.cpp as the oracle.

    python scripts/make_tokenizer_golden.py [--gemma PATH] [--out tests/data]

Needs (not engine dependencies): llama-cpp-python==0.3.36 (pip builds llama.cpp from source, about
15 minutes on 2 cores), tokenizers, gguf, numpy. Writes:

  tokenizer_golden_gemma.json  Gemma 3's vocabulary (the GGUF itself, and a vocab-only copy with
                               add_space_prefix=true): llama.cpp's ids for STRINGS with special
                               tokens parsed and not, its end-of-generation ids, and its
                               token_to_piece bytes for a sample of ids.
  tokenizer_golden_bpe.json    a small byte-level BPE vocabulary trained here with Hugging Face
                               `tokenizers` on STRINGS + the TinyStories sample, written as
                               vocab-only GGUFs with each tokenizer.ggml.pre in BPE_PRE;
                               the vocabulary itself, llama.cpp's ids for every string, its
                               end-of-generation ids and pieces, and the strings on which
                               `tokenizers` (a second opinion) disagrees with llama.cpp.

Each case holds llama.cpp's `ids` (add_special=False, parse_special=False), `ids_special`
(parse_special=True) and `ids_add_special` (add_special=True: the model's own BOS/EOS policy).

The test (tests/test_tokenizer.py) rebuilds each tokenizer from the same metadata and compares.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GEMMA_DEFAULT = os.environ.get("MOTE_GEMMA_PATH", "/tmp/gemma/gemma-3-270m-q4_k_m.gguf")
TINYSTORIES = ROOT / "tests" / "data" / "shared" / "atome" / "tinystories_sample.txt"
BPE_VOCAB_SIZE = 1200
BPE_PRE = ("gpt-2", "llama-bpe", "qwen2", "default", "starcoder")
HF_PRE = ("gpt-2", "llama-bpe", "qwen2")     # the ones rebuilt in `tokenizers` as a second opinion
# tokens added to the trained BPE vocabulary: control, user-defined, and one normal token no merge
# path reaches (only llama-bpe's ignore_merges finds it whole)
BPE_CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BPE_USER = ["<|user|>", "<tag>"]
BPE_UNREACHABLE = ["Ġunreachableword"]

# Strings nobody has tokenized for us before (plus `random_strings()` below): whitespace runs, digits, scripts, emoji, byte
# fallback, special-token texts (parsed and not), code, and text around the special tokens.
STRINGS = [
    "", " ", "  ", "   ", "a", "Hello world", "hello world", " Hello", "  two leading spaces",
    "trailing spaces   ", "   \n", "\n", "\n\n", "\n\n\n", "a\nb", "a\n\nb", "a \n b",
    "line1\r\nline2\r\n", "\r", "\ttab", "a\t\tb", "mixed \t\n whitespace \n\t ", "tab\t\t\t\tend",
    "1", "12", "123", "1234", "1234567890", "3.14159 2,718 -42 +7", "x=10**9+7", "0x1F 0b1010",
    "2024-01-31T12:00:00Z", "v1.2.3", "½ ¾ ² ³ Ⅻ ٣ ४", "naïve café", "Ünïcödé", "Straße ẞ",
    "ﬁ ligature", "e\u0301 combining acute", "Ελληνικά γράμματα", "русский текст", "עברית",
    "العربية", "हिन्दी", "ไทย", "日本語のテキスト", "中文字符和标点。", "한국어 문장", "𠀀𠀁 CJK ext B",
    "emoji 🙂🚀👍🏽 👨\u200d👩\u200d👧", "🇫🇷🇯🇵 flags", "\u200b zero\u200bwidth", "\u00a0nbsp\u00a0",
    "\u3000ideographic space", "a\u2028b\u2029c", "x\x85y", "control \x01\x02\x1b\x7f chars",
    "\x1c\x1d\x1e\x1f separators", "private \ue000\uf8ff", "\ufeffBOM", "\U0010fffd last plane",
    "don't I'll we've they're she'd it's I'm", "DON'T I'LL WE'VE", "can't's", "'s 're 'S",
    "l'été c'est", "’curly’ “quotes”", "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos>", "<unused0><unused99>", "<b>bold</b> <i>it</i> <s>x</s>",
    "<table><tr><td>x</td></tr></table>", "<start_of_turn", "<<start_of_turn>>", "[multimodal]",
    "<start_of_image><end_of_image>", "text<start_of_turn> after", " <end_of_turn> ",
    "<|endoftext|>", "a<|endoftext|>b", "<|im_start|>user\nhi<|im_end|>", "<|user|> <tag>x</tag>",
    "def f(x):\n    return x**2\n", "    indented\n        more\n\t\tdeep",
    "if (a && b) { c++; } else { d--; }", "https://example.com/path?q=1&r=2#frag",
    "email@example.com", "C:\\Windows\\path", "$100 + 50% = #1 ~ ^ | ` @", "!!!???...", "-----",
    "=====", "......", "▁already▁escaped", "Mixed▁and spaces", "a" * 60, " " * 40, "\n" * 40,
    "\t" * 35, "ab" * 30, "9" * 25,
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the quick brown fox?",
    "unreachableword unreachableword",
]

# Seeded random strings over a fixed pool (so regenerating never depends on the Python version):
# ASCII, every whitespace kind, and code points of each Unicode class the pre-tokenizers look at.
RANDOM_POOL = (
    [chr(c) for c in range(32, 127)] * 2 + list("\t\n\r\x0b\x0c\x85\xa0\u2000\u2028\u3000\x1c\x00")
    + list("éüßÆŁλΩжЯאبकไ日本語中文한글ヲ々") + list("٣४²½Ⅻ") + list("\u0301\u0308\u093f")
    + list("’“”—…¿¡«»§") + list("€£¥±×÷∑√∞♥★☃") + ["🙂", "🚀", "👍🏽", "\U00020000", "\ue000"]
    + ["'s", "'LL", "'d", "<start_of_turn>", "<end_of_turn>", "<b>", "</s>", "\n\n", "  ", "\t\t",
       "<|endoftext|>", "<|user|>", "<tag>", "\u2581"]
)
N_RANDOM, RANDOM_MAX_LEN, RANDOM_SEED = 200, 24, 1234


def random_strings() -> list[str]:
    rng = random.Random(RANDOM_SEED)
    return ["".join(rng.choice(RANDOM_POOL) for _ in range(rng.randint(1, RANDOM_MAX_LEN)))
            for _ in range(N_RANDOM)]


# ids whose token_to_piece we record for Gemma: every byte and special token but the 6000-odd
# "<unusedN>", every id the cases produce, and every PIECE_STRIDE-th id
PIECE_STRIDE = 101


# --------------------------------------------------------------------------------------------
# llama.cpp through llama-cpp-python
# --------------------------------------------------------------------------------------------

def load_vocab(path: str):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return llm


def lc_tokenize(llm, text: str, add_bos: bool, special: bool) -> list[int]:
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))


def lc_vocab(llm):
    import llama_cpp
    return llama_cpp.llama_model_get_vocab(llm.model)


def lc_piece(llm, token: int, special: bool) -> bytes:
    import llama_cpp
    vocab = lc_vocab(llm)
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, -n, 0, special)
    return buf.raw[:n]


def lc_eog(llm, n_vocab: int) -> list[int]:
    import llama_cpp
    vocab = lc_vocab(llm)
    return [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]


def tokenize_all(llm) -> list[dict]:
    cases = []
    for s in STRINGS + random_strings():
        cases.append({
            "text": s,
            "ids": lc_tokenize(llm, s, add_bos=False, special=False),
            "ids_special": lc_tokenize(llm, s, add_bos=False, special=True),
            "ids_add_special": lc_tokenize(llm, s, add_bos=True, special=False),  # model policy
        })
    return cases


# --------------------------------------------------------------------------------------------
# GGUF writing (vocab-only files for llama.cpp), with gguf-py
# --------------------------------------------------------------------------------------------

def write_vocab_gguf(path: str, arch: str, hparams: dict, tok: dict) -> None:
    """A GGUF with no tensors: `arch` hyperparameters plus tokenizer.ggml.* keys from `tok`."""
    import gguf
    w = gguf.GGUFWriter(path, arch)
    for key, (vtype, value) in hparams.items():   # key -> (GGUFValueType, value)
        w.add_key_value(key, value, vtype)
    for key, value in tok.items():
        full = "tokenizer.ggml." + key
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        elif isinstance(value, str):
            w.add_string(full, value)
        elif isinstance(value, np.ndarray) and value.dtype == np.float32:
            w.add_key_value(full, value.tolist(), gguf.GGUFValueType.ARRAY,
                            sub_type=gguf.GGUFValueType.FLOAT32)
        elif isinstance(value, np.ndarray):
            w.add_key_value(full, value.astype(np.int32).tolist(), gguf.GGUFValueType.ARRAY,
                            sub_type=gguf.GGUFValueType.INT32)
        else:
            w.add_array(full, list(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gemma_vocab_only(src_metadata: dict, path: str, add_space_prefix: bool) -> None:
    import gguf
    T = gguf.GGUFValueType
    md = src_metadata
    arch = md["general.architecture"]
    hp = {}
    for key, value in md.items():
        if key.startswith(arch + "."):
            if isinstance(value, bool):
                hp[key] = (T.BOOL, value)
            elif isinstance(value, int):
                hp[key] = (T.UINT32, value)
            elif isinstance(value, float):
                hp[key] = (T.FLOAT32, value)
    tok = {k[len("tokenizer.ggml."):]: v for k, v in md.items() if k.startswith("tokenizer.ggml.")}
    tok["add_space_prefix"] = add_space_prefix
    write_vocab_gguf(path, arch, hp, tok)


# --------------------------------------------------------------------------------------------
# Gemma golden
# --------------------------------------------------------------------------------------------

def gemma_golden(gemma_path: str, tmp: str) -> dict:
    from engine.gguf import open_gguf
    md = open_gguf(gemma_path).metadata
    n = len(md["tokenizer.ggml.tokens"])
    types = np.asarray(md["tokenizer.ggml.token_type"])

    llm = load_vocab(gemma_path)
    out = {"source": f"llama.cpp (llama-cpp-python 0.3.36, vocab_only) on {Path(gemma_path).name}",
           "cases": tokenize_all(llm), "eog_ids": lc_eog(llm, n)}
    tokens = md["tokenizer.ggml.tokens"]
    ids = sorted({i for i in np.nonzero(types != 1)[0].tolist() if "unused" not in tokens[i]}
                 | set(range(0, n, PIECE_STRIDE))
                 | {i for c in out["cases"] for i in c["ids"] + c["ids_special"]})
    out["pieces"] = {str(i): [lc_piece(llm, i, False).hex(), lc_piece(llm, i, True).hex()]
                     for i in ids}
    del llm

    # the same vocabulary with a SentencePiece space prefix (Llama-2 style behaviour)
    path = os.path.join(tmp, "gemma-vocab-prefix.gguf")
    gemma_vocab_only(md, path, add_space_prefix=True)
    llm = load_vocab(path)
    out["add_space_prefix_cases"] = tokenize_all(llm)
    del llm
    return out


# --------------------------------------------------------------------------------------------
# byte-level BPE golden
# --------------------------------------------------------------------------------------------

def train_bpe() -> tuple[list[str], list[str]]:
    """A small byte-level BPE vocabulary (token texts by id) and its merges, trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    corpus = [s for s in STRINGS if s]
    if TINYSTORIES.exists():
        corpus += TINYSTORIES.read_text(encoding="utf-8").splitlines()[:2000]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    model = json.loads(tk.to_str())["model"]
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def hf_bpe(tokens, merges, pre: str):
    """The same vocabulary as a `tokenizers` Tokenizer with the pre-tokenizer llama.cpp uses."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = Tokenizer(models.BPE(vocab, pairs, ignore_merges=(pre == "llama-bpe")))
    if pre == "gpt-2":
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        num = r"\p{N}{1,3}" if pre == "llama-bpe" else r"\p{N}"
        pat = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|" + num +
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.add_special_tokens(BPE_CONTROL)        # already in the vocabulary: the ids stay ours
    tk.add_tokens(BPE_USER)
    return tk


def bpe_golden(tmp: str) -> dict:
    import gguf
    T = gguf.GGUFValueType
    tokens, merges = train_bpe()
    tokens = tokens + BPE_UNREACHABLE + BPE_CONTROL + BPE_USER
    types = np.array([1] * (len(tokens) - len(BPE_CONTROL) - len(BPE_USER))
                     + [3] * len(BPE_CONTROL) + [4] * len(BPE_USER), np.int32)
    eot = tokens.index("<|endoftext|>")
    out = {"source": "llama.cpp (llama-cpp-python 0.3.36, vocab_only) on vocab-only GGUFs; "
                     "tokenizers_disagrees_on: strings where Hugging Face tokenizers (same "
                     "vocabulary, parse_special) gives other ids",
           "metadata": {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
                        "tokenizer.ggml.token_type": types.tolist(), "tokenizer.ggml.merges": merges,
                        "tokenizer.ggml.bos_token_id": eot, "tokenizer.ggml.eos_token_id": eot},
           "pre": {}}
    hp = {"gpt2.context_length": (T.UINT32, 1024), "gpt2.embedding_length": (T.UINT32, 64),
          "gpt2.feed_forward_length": (T.UINT32, 256), "gpt2.block_count": (T.UINT32, 1),
          "gpt2.attention.head_count": (T.UINT32, 4),
          "gpt2.attention.layer_norm_epsilon": (T.FLOAT32, 1e-5)}
    for pre in BPE_PRE:
        path = os.path.join(tmp, f"bpe-{pre}.gguf")
        write_vocab_gguf(path, "gpt2", hp, {
            "model": "gpt2", "pre": pre, "tokens": tokens, "token_type": types, "merges": merges,
            "bos_token_id": eot, "eos_token_id": eot})
        llm = load_vocab(path)
        cases = tokenize_all(llm)
        out["pre"][pre] = {"cases": cases, "eog_ids": lc_eog(llm, len(tokens))}
        if pre in HF_PRE:
            # tokenizers always splits out added tokens, so it is compared with ids_special
            hf = hf_bpe(tokens, merges, pre)
            differ = [c["text"] for c in cases
                      if hf.encode(c["text"], add_special_tokens=False).ids != c["ids_special"]]
            out["pre"][pre]["tokenizers_disagrees_on"] = differ
            print(f"  {pre}: tokenizers disagrees with llama.cpp on {len(differ)} of {len(cases)}")
        pieces = {str(i): [lc_piece(llm, i, False).hex(), lc_piece(llm, i, True).hex()]
                  for i in range(len(tokens))}
        assert out.setdefault("pieces", pieces) == pieces   # the same for every pre-tokenizer
        del llm
    return out


def dump(obj, depth: int = 0) -> str:
    """JSON with one line per case / piece (small, and diffs line up with strings)."""
    one = lambda x: json.dumps(x, ensure_ascii=True, separators=(",", ":"))  # noqa: E731
    pad = " " * (depth + 1)
    if isinstance(obj, dict) and depth < 3 and any(isinstance(v, (dict, list)) for v in obj.values()):
        items = [f"{pad}{one(k)}: {dump(v, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        return "[\n" + ",\n".join(pad + one(x) for x in obj) + "\n" + " " * depth + "]"
    return one(obj)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemma", default=GEMMA_DEFAULT)
    ap.add_argument("--out", default=str(ROOT / "tests" / "data"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print("1. Gemma vocabulary")
        g = gemma_golden(args.gemma, tmp)
        (out / "tokenizer_golden_gemma.json").write_text(dump(g) + "\n")
        print("2. byte-level BPE vocabularies")
        b = bpe_golden(tmp)
        (out / "tokenizer_golden_bpe.json").write_text(dump(b) + "\n")
    print("wrote", out / "tokenizer_golden_gemma.json", out / "tokenizer_golden_bpe.json")


if __name__ == "__main__":
    main()
