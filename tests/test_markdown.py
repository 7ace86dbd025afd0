"""static/markdown.js's parser, run in Node (the DOM side and hostile input in a page: test_browser.py).

Model answers are Markdown; the page builds them as DOM nodes from these blocks, so what matters
here is that each construct lands in the right block, and that HTML, script-ish links and
unbalanced markers stay literal text.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.paths import ROOT

MODULE = ROOT / "static" / "markdown.js"


def parse(text: str) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/setup.sh expects Node 20)")
    script = (f"import {{ parseMarkdown }} from {json.dumps(MODULE.as_uri())};\n"
              "let s = ''; process.stdin.on('data', (d) => { s += d; });\n"
              "process.stdin.on('end', () => console.log(JSON.stringify(parseMarkdown(s))));\n")
    out = subprocess.run([node, "--input-type=module", "-e", script], input=text, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def plain(inlines: list[dict]) -> str:
    """The text of inline spans, marking code as `x`, strong as **x**, em as *x*, links as [x](url)."""
    out = []
    for s in inlines:
        if s["type"] == "text":
            out.append(s["text"])
        elif s["type"] == "code":
            out.append(f"`{s['text']}`")
        elif s["type"] == "link":
            out.append(f"[{plain(s['children'])}]({s['href']})")
        else:
            mark = "**" if s["type"] == "strong" else "*"
            out.append(mark + plain(s["children"]) + mark)
    return "".join(out)


def test_an_answer_about_code():
    text = ("Use a **list comprehension**:\n\n```python\ndef squares(n):\n    return [i * i for i in range(n)]\n```\n\n"
            "Steps:\n1. call `squares(3)`\n2. it returns *three* items\n\n- fast\n- short\n  and readable\n")
    blocks = parse(text)
    assert [b["type"] for b in blocks] == ["p", "code", "p", "list", "list"]
    assert plain(blocks[0]["inlines"]) == "Use a **list comprehension**:"
    assert blocks[1] == {"type": "code", "lang": "python", "closed": True,
                         "text": "def squares(n):\n    return [i * i for i in range(n)]"}
    assert blocks[3]["ordered"] and [plain(i) for i in blocks[3]["items"]] == ["call `squares(3)`", "it returns *three* items"]
    assert not blocks[4]["ordered"] and [plain(i) for i in blocks[4]["items"]] == ["fast", "short\nand readable"]


def test_streaming_fence_is_code_to_the_end():
    blocks = parse("Here:\n```js\nconst a = 1;\nconst b = `x`")
    assert blocks[-1] == {"type": "code", "lang": "js", "closed": False, "text": "const a = 1;\nconst b = `x`"}


@pytest.mark.parametrize("text, expected", [
    ("snake_case_name and __init__", "snake_case_name and __init__"),          # underscores are never emphasis
    ("2 * 3 * 4", "2 * 3 * 4"),                                                # spaced asterisks are literal
    ("unclosed `tick and **bold", "unclosed `tick and **bold"),
    ("a ``code with ` inside`` b", "a `code with ` inside` b"),
    (r"\*not em\* and \`not code\`", "*not em* and `not code`"),
    ("[site](https://example.org/a?b=1)", "[site](https://example.org/a?b=1)"),
])
def test_inline_spans(text, expected):
    (block,) = parse(text)
    assert plain(block["inlines"]) == expected


@pytest.mark.parametrize("text", [
    "<script>window.pwned = 1</script>",
    '<img src=x onerror="window.pwned = 1">',
    "[click](javascript:window.pwned=1)",
    "[click](data:text/html,<script>1</script>)",
    '[x](https://a.b/" onclick="pwned)',
    "<a href=\"javascript:alert(1)\">x</a>",
])
def test_html_and_unsafe_links_stay_text(text):
    (block,) = parse(text)
    assert block["type"] == "p"
    assert all(s["type"] == "text" for s in block["inlines"]), block
    assert plain(block["inlines"]) == text


def test_headings_quotes_rules_and_crlf():
    blocks = parse("# Title\r\n> a quote\r\n\r\n---\r\n### Small **one**\r\ntext")
    assert [(b["type"], b.get("level")) for b in blocks] == [("heading", 1), ("quote", None), ("rule", None),
                                                             ("heading", 3), ("p", None)]
    assert plain(blocks[3]["inlines"]) == "Small **one**"


def test_long_hostile_input_is_parsed_quickly():
    # many unmatched markers: the scan stays near linear, not one full rescan per marker
    blocks = parse("*a " * 20000 + "`" * 3 + "\n" + "[" * 20000)
    assert blocks
