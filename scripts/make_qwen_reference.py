"""Make tests/data/qwen_chat_reference.json: Hugging Face transformers' greedy answers to multi-turn
chats for the instruction-tuned Qwen2.5-Coder GGUF models that `mote pull` offers.

Method (as scripts/make_gemma_reference.py): transformers' Qwen2ForCausalLM in float32 on the
GGUF's dequantized weights (from_pretrained(gguf_file=...)), greedy decoding, N_NEW new tokens.
Each chat is rendered by transformers' own `apply_chat_template(..., add_generation_prompt=True)`
with the GGUF's template; its token ids are stored so the engine's rendering is checked too.
step_margins[i] = top-1 minus top-2 logit at new token i (a small margin is a near tie).

Needs torch, transformers, gguf (the dev extra) and accelerate (`pip install accelerate`):
    .venv/bin/python scripts/make_qwen_reference.py qwen2.5-coder-0.5b-instruct.gguf [more.gguf ...]
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CHATS = [
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    [{"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
     {"role": "user", "content": "What does the `yield` keyword do in Python?"}],
    [{"role": "user", "content": "Reverse a list in JavaScript."},
     {"role": "assistant", "content": "Use `arr.reverse()`; it reverses the array in place."},
     {"role": "user", "content": "And without changing the original array?"}],
    [{"role": "system", "content": "You review code and point out bugs."},
     {"role": "user", "content": "def mean(xs):\n    return sum(xs) / len(xs) - 1\n\nWhat is wrong here?"}],
    [{"role": "user", "content": "Rename x to count:\n\nx = 0\nfor item in items:\n    if item:\n        x += 1\nprint(x)"}],
    [{"role": "user", "content": "Explain a SQL LEFT JOIN in two sentences."},
     {"role": "assistant", "content": "A LEFT JOIN returns every row of the left table and the matching rows "
                                      "of the right one. Where nothing matches, the right table's columns are NULL."},
     {"role": "user", "content": "Give a short example query."}],
]
N_NEW = 32


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def reference(path: Path) -> dict:
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    out = {
        "file_sha256": sha256(path),
        "how": (
            f"transformers {transformers.__version__} {type(model).__name__} in float32 on the GGUF's dequantized "
            f"weights, torch {torch.__version__} CPU; chats rendered by transformers' apply_chat_template "
            f"(add_generation_prompt=True) with the GGUF's template; greedy, {N_NEW} new tokens; "
            f"made by scripts/make_qwen_reference.py"
        ),
        "chats": [],
    }
    for messages in CHATS:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = ids["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        new = gen.sequences[0, ids.shape[1]:].tolist()
        margins = [float(t[0] - t[1]) for t in (torch.topk(s[0].float(), 2).values for s in gen.scores)]
        out["chats"].append({"messages": messages, "prompt_tokens": ids[0].tolist(), "greedy_tokens": new,
                             "greedy_text": tok.decode(new), "step_margins": margins})
        print(repr(messages[-1]["content"][:40]), "->", repr(tok.decode(new)), file=sys.stderr)
    return out


def main(paths: list[str]) -> None:
    dest = Path(__file__).resolve().parent.parent / "tests" / "data" / "qwen_chat_reference.json"
    data = json.loads(dest.read_text()) if dest.exists() else {}
    for p in paths:
        path = Path(p).resolve()
        ref = reference(path)
        data[ref["file_sha256"]] = ref
    dest.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(dest)


if __name__ == "__main__":
    main(sys.argv[1:])
