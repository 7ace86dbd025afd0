"""Make tests/data/tokenizer_golden_qwen.json: llama.cpp's token ids for the instruct models' own
vocabulary (Qwen2.5-Coder, `qwen2` pre-tokenizer) on code-heavy strings.

    /tmp/llenv/bin/python scripts/make_qwen_tokenizer_golden.py qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

Needs llama-cpp-python==0.3.36 (pip builds llama.cpp from source; not a Mote dependency; a venv
of its own: python3 -m venv /tmp/llenv && /tmp/llenv/bin/pip install llama-cpp-python==0.3.36 numpy).
The strings: those of scripts/make_tokenizer_golden.py (whitespace runs, digits, scripts, emoji,
special-token texts, seeded random strings) plus CODE below (indentation runs, tabs, CRLF, long
numbers, identifiers, CJK and emoji inside code). Each case holds llama.cpp's `ids`
(parse_special=False) and `ids_special` (parse_special=True), both without BOS (Qwen adds none).
tests/test_tokenizer_qwen.py rebuilds the tokenizer from the pulled GGUF and compares.
"""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tokgold", ROOT / "scripts" / "make_tokenizer_golden.py")
tokgold = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tokgold)

CODE = [
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n",
    "\tif (x) {\n\t\treturn 1;\n\t}\n", "\t\t\t\tdeep tabs", "  \t  mixed\t  indent",
    "    " * 8 + "x = 1", " " * 17 + "odd run", "\n\n\n    \n    \n", "a\r\n    b\r\n\tc\r\n",
    "for (int i = 0; i < 1000000; ++i) { sum += i * 31337; }", "x = 12345678901234567890",
    "0xDEADBEEF 0o777 1e-10 6.02214076e23 1_000_000", "arr[0][1] = {'k': [1, 2, 3]}",
    "SELECT t1.a, COUNT(*) FROM t1 LEFT JOIN t2 ON t1.id = t2.id GROUP BY t1.a;",
    "const f = async (x) => { await g(x?.y ?? 0); };", "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }", "$ git commit -m \"fix: 修复错误\"",
    "# 注释：计算阶乘\ndef 阶乘(n):\n    return 1 if n <= 1 else n * 阶乘(n - 1)",
    "print('😀 done')  # 🚀", "s = '''multi\nline'''", "x = \"tab\\tand\\nnewline\"",
    "camelCaseIdentifier snake_case_identifier SCREAMING_CASE __dunder__", "https://example.com/a/b?c=1",
    "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>", "<|endoftext|>", "a<|im_end|>b",
]


def main(path: str) -> None:
    llm = tokgold.load_vocab(path)
    strings = list(dict.fromkeys(tokgold.STRINGS + CODE + tokgold.random_strings()))
    cases = [{"text": s, "ids": tokgold.lc_tokenize(llm, s, add_bos=False, special=False),
              "ids_special": tokgold.lc_tokenize(llm, s, add_bos=False, special=True)} for s in strings]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    import llama_cpp

    out = {"how": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (vocab_only), tokenize(add_bos=False, "
                  f"special=False / True); made by scripts/make_qwen_tokenizer_golden.py",
           "file_sha256": h.hexdigest(), "cases": cases}
    dest = ROOT / "tests" / "data" / "tokenizer_golden_qwen.json"
    dest.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n")
    print(dest, len(cases), "cases")


if __name__ == "__main__":
    main(sys.argv[1])
