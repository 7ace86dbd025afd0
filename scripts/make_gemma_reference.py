"""Make tests/data/gemma_extra_reference.json: Hugging Face transformers' own greedy tokens and
logits for Gemma 3 270M on prompts that shared/reference does not cover.

Same method as shared/reference/gemma3-270m.json's exact_reference: transformers'
Gemma3ForCausalLM in float32 on the GGUF's dequantized weights (from_pretrained(gguf_file=...)),
greedy decoding, 32 new tokens. The prompt is tokenized by transformers' tokenizer built from the
same GGUF, BOS first.

Needs torch, transformers, accelerate, gguf (not Mote's dependencies); run it in its own venv:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0 transformers accelerate gguf sentencepiece protobuf
    /tmp/refenv/bin/python scripts/make_gemma_reference.py /path/to/gemma-3-270m-q4_k_m.gguf
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The quick brown fox",
    "In 1969, the first humans",
    "Here is a list of fruits:\n1. Apple\n2.",
    "Water boils at a temperature of",
    "Le petit chat est",
    "import numpy as np\n\ndef softmax(x):",
]
N_NEW = 32


def main(gguf_path: str) -> None:
    path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    out = {
        "how": (
            f"transformers {transformers.__version__} Gemma3ForCausalLM in float32 on the GGUF's dequantized "
            f"weights, torch {torch.__version__} CPU; prompt tokenized by transformers' GGUF tokenizer "
            f"(BOS first); greedy, {N_NEW} new tokens; made by scripts/make_gemma_reference.py"
        ),
        "prompts": {},
    }
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0, -1].float()
            top = torch.topk(logits, 20)
            gen = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        new = gen.sequences[0, ids.shape[1]:].tolist()
        margins = []
        for s in gen.scores:
            t2 = torch.topk(s[0].float(), 2).values
            margins.append(float(t2[0] - t2[1]))
        out["prompts"][prompt] = {
            "prompt_tokens": ids[0].tolist(),
            "greedy_tokens": new,
            "greedy_text": tok.decode(new),
            "step_margins": margins,
            "last_logits_top20": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
        }
        print(prompt, "->", repr(tok.decode(new)), file=sys.stderr)
    dest = Path(__file__).resolve().parent.parent / "tests" / "data" / "gemma_extra_reference.json"
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(dest)


if __name__ == "__main__":
    main(sys.argv[1])
