"""The instruction-tuned Qwen2.5-Coder models in the chat page, in headless Chromium (slow tier).

The 0.5B on 1 and 2 workers and the 1.5B on 2 workers answer a coding request with the CPython
engine's greedy tokens (the same Session, tests/tiny_golden.engine_greedy). The 0.5B on 2 workers
also holds a three-turn conversation: turns 2 and 3 reuse the KV cache of the turns before
(n_reused), and the time to first token of turns 1 and 3 is printed. On 1 and 2 workers a code
edit is answered with prompt lookup on (the page's default): drafted tokens are kept, and the
tokens are CPython's plain greedy ones (--no-lookup). Screenshots of the page
answering (phone and desktop width) go to $MOTE_SCREENSHOTS (default /tmp).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import tiny_golden as tg
from tests.browser_util import chromium, ensure_static_built, serve_in_thread
from tests.paths import pulled_model
from tests.test_browser import PHONE, chat, cores, load_model, metrics, open_page, phone_tab, select_model, worker_memory

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QUESTION = "Write a Python function that reverses a string."
TOKENS = 12
EDIT = ("Rename `x` to `total`. Only the code, no explanation.\n\n```python\ndef add_all(items):\n    x = 0\n"
        "    for item in items:\n        x += item\n    return x\n```")
EDIT_TOKENS = 32
SCREENSHOTS = Path(os.environ.get("MOTE_SCREENSHOTS", "/tmp"))
DESKTOP = {"width": 1280, "height": 900}
SMALL, LARGE = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"


@pytest.fixture(scope="module")
def qwen_site(tmp_path_factory):
    """The dev server with both instruct models; CPython's greedy answer for each (computed lazily)."""
    pytest.importorskip("fastapi")
    from web.app import Settings, create_app

    paths = {name: pulled_model(name) for name in (SMALL, LARGE)}
    models = tmp_path_factory.mktemp("qwen-models")
    for path in paths.values():
        (models / path.name).symlink_to(path.resolve())
    app = create_app(Settings(models_dir=models, static_dir=ensure_static_built(), follow_symlinks=True))
    references: dict[tuple, dict] = {}

    def reference(name: str, question: str = QUESTION, tokens: int = TOKENS) -> dict:
        """CPython's plain greedy answer (no prompt lookup)."""
        if (name, question) not in references:
            from engine import bridge

            references[name, question] = tg.engine_greedy(paths[name].read_bytes(),
                                                          {"messages": [{"role": "user", "content": question}],
                                                           "max_tokens": tokens, "params": {"speculative": False}})
            bridge._session = None     # free the CPython copy before the browser loads the model
        return references[name, question]

    with serve_in_thread(app) as base_url:
        yield base_url, paths, reference


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def answer_in_tab(browser, qwen_site, name: str, workers: int) -> tuple:
    """Open the page on `workers` cores, load `name`, ask QUESTION; (page, context, done, ready)."""
    base_url, paths, reference = qwen_site
    expected = reference(name)
    page, context, logs = phone_tab(browser, cores(workers))
    open_page(page, base_url)
    select_model(page, paths[name].name)
    assert page.locator("#model-select option:checked").inner_text().split(" · ")[1] == "chat"
    ready = load_model(page, paths[name].name, timeout_s=480)
    assert ready["type"] == "ready", (ready, logs)
    assert page.evaluate("() => window.moteApp.state.workers") == workers
    done = chat(page, QUESTION, TOKENS, timeout_s=480)
    assert done["token_ids"] == expected["tokens"], (done["full_text"], expected["text"])
    assert done["n_prompt"] == len(expected["prompt_tokens"])
    # the budget estimated from the header before the download (engine/budget.py), each worker's heap
    # grown once to its share (+ a margin), covered the load and the answer: no worker's WASM grew
    # again (a growth adds at least 20 %)
    rows = worker_memory(page, ready, f"{name}_{workers}w")
    wasm = sum(r["wasm"] for r in rows)
    metrics(**{f"{name}_{workers}w_wasm_mb": round(wasm / 1e6), f"{name}_{workers}w_budget_mb": round(ready["budget"]["total_bytes"] / 1e6),
               f"{name}_{workers}w_wasm_per_file": round(wasm / paths[name].stat().st_size, 3)})
    return page, context, done, ready


@pytest.mark.parametrize("workers", [1, 2])
def test_qwen_05b_answers_like_cpython(browser, qwen_site, workers):
    page, context, done, ready = answer_in_tab(browser, qwen_site, SMALL, workers)
    try:
        page.click("#clear-btn")
        edit = chat(page, EDIT, EDIT_TOKENS, timeout_s=480)
        expected = qwen_site[2](SMALL, EDIT, EDIT_TOKENS)
        assert edit["token_ids"] == expected["tokens"], (edit["full_text"], expected["text"])
        assert edit["n_drafted"] >= edit["n_accepted"] > 0, edit
        if workers == 2:
            conversation(page)
            screenshots(page)
    finally:
        context.close()
    metrics(**{f"qwen05b_{workers}w_decode_tok_s": round(done["decode_tok_s"], 2),
               f"qwen05b_{workers}w_edit_lookup_kept": f"{edit['n_accepted']}/{edit['n_drafted']}",
               f"qwen05b_{workers}w_cold_model_s": round(ready["seconds"], 1)})


def test_qwen_15b_answers_on_two_workers(browser, qwen_site):
    page, context, done, ready = answer_in_tab(browser, qwen_site, LARGE, 2)
    context.close()
    metrics(qwen15b_2w_decode_tok_s=round(done["decode_tok_s"], 2), qwen15b_2w_cold_model_s=round(ready["seconds"], 1))


def conversation(page) -> None:
    """Turns 2 and 3 of one conversation reuse the cache of the turns before; TTFT of turns 1 and 3."""
    page.click("#clear-btn")
    dones = [chat(page, text, 8, timeout_s=480) for text in
             ("What does len() return for a list?", "And for a string?", "Show one example of each.")]
    turns = page.evaluate("() => window.moteApp.state.turns")
    assert turns[0]["n_reused"] <= 24   # at most the chat template's opening (Qwen2.5: 24 tokens, engine.chat.opening_tokens)
    for before, after in zip(dones, dones[1:]):
        assert after["n_reused"] >= before["n_prompt"], (before, after)   # only the new turn is prefilled
    metrics(qwen05b_2w_turns=[{"ttft_s": round(t["ttft_ms"] / 1000, 2), "n_prompt": t["n_prompt"],
                               "n_reused": t["n_reused"]} for t in turns])


def screenshots(page) -> None:
    """The page answering a coding question, at phone and desktop width."""
    page.click("#clear-btn")
    chat(page, "Write a Python function that checks whether a number is prime. Keep it short.", 96, timeout_s=480)
    page.evaluate("() => { document.getElementById('settings').open = false; }")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "mote-qwen-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(SCREENSHOTS / "mote-qwen-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    assert page.locator(".msg.assistant .codeblock").count() >= 1   # the answer's code is a code block
