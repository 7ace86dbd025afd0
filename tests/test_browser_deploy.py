"""A deployment while a page is open or cached never gives the page a mix of old and new files.

The page loads everything from /static/v/<version>/ (web/app.py ShellVersion) and the service
worker keeps one cache per version (static/sw.js). Here the server's static folder is a copy; a
"deployment" changes a script in it while a page is open:

1. the open page's later requests for its version (the same file, a fresh worker's scripts) get
   its own version's bytes from the service worker, never the new ones; the server itself answers
   that old version with 404 "reload the page";
2. a reload runs the new version, and the page answers with the golden tokens;
3. offline, a reload runs the newest version from the cache, whole, and answers;
4. two versions' caches are kept, no more.
"""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request

import pytest

from tests import tiny_golden as tg
from tests.browser_util import chromium, ensure_static_built, serve_in_thread
from tests.test_browser import chat, load_model, open_page, phone_tab

pytestmark = pytest.mark.browser

MARK = "// deployed: the second version\n"


@pytest.fixture(scope="module")
def deploy_site(tmp_path_factory):
    pytest.importorskip("fastapi")
    from web.app import Settings, create_app

    static = tmp_path_factory.mktemp("deploy") / "static"
    shutil.copytree(ensure_static_built(), static)
    models = tmp_path_factory.mktemp("models")
    golden = tg.load_golden()
    tg.write_model(models / tg.FILE_NAME, golden)
    with serve_in_thread(create_app(Settings(models_dir=models, static_dir=static))) as url:
        yield url, static, golden


def _version(page) -> str:
    src = page.evaluate("() => document.querySelector('script[type=module]').src")
    return re.search(r"/static/v/([0-9a-f]+)/main\.js$", src)[1]


def _server_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_deployment_never_mixes_versions(deploy_site):
    base, static, golden = deploy_site
    with chromium() as browser:
        page, context, logs = phone_tab(browser)
        old_protocol = (static / "protocol.js").read_text()
        try:
            open_page(page, base)
            page.evaluate("async () => { await navigator.serviceWorker.ready; }")
            page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=10_000)
            old = _version(page)
            page.wait_for_function(f"() => caches.has('mote-shell-{old}')", timeout=30_000)

            # the deployment: a script changes on the server
            (static / "protocol.js").write_text(old_protocol + MARK)
            status, body = _server_get(f"{base}/static/v/{old}/protocol.js")
            assert status == 404 and "reload the page" in body
            new_status, new_body = _server_get(f"{base}/static/v/{_new_version(base)}/protocol.js")
            assert new_status == 200 and new_body.endswith(MARK)

            # 1. the open page still gets its own version, for a file it has and one it never loaded
            got = page.evaluate(f"""async () => [await (await fetch('/static/v/{old}/protocol.js')).text(),
                                                 (await fetch('/static/v/{old}/parallel-worker.js')).status]""")
            assert got[0] == old_protocol and got[1] == 200
            ready = load_model(page, tg.FILE_NAME)    # the old page goes on working
            assert ready["type"] == "ready", (ready, logs)
            assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]

            # 2. a reload runs the new version
            open_page(page, base)
            new = _version(page)
            assert new != old
            assert page.evaluate(f"async () => (await (await fetch('/static/v/{new}/protocol.js')).text())").endswith(MARK)
            page.wait_for_function(f"""async () => {{
                const c = await caches.open('mote-shell-{new}');
                return !!(await c.match('/static/v/{new}/main.js')) && !!(await c.match('/static/v/{new}/build-manifest.json'));
            }}""", timeout=60_000)

            # 3. offline: the newest version, whole, from the cache
            context.set_offline(True)
            try:
                open_page(page, base)
                assert _version(page) == new
                ready = load_model(page, tg.FILE_NAME)
                assert ready["type"] == "ready" and ready["cached"] is True, (ready, logs)
                done = chat(page, golden["messages"][0]["content"], golden["max_tokens"])
                assert done["token_ids"] == golden["tokens"]
            finally:
                context.set_offline(False)

            # 4. the kept versions
            shells = page.evaluate("async () => (await caches.keys()).filter((k) => k.startsWith('mote-shell-'))")
            assert sorted(shells) == sorted([f"mote-shell-{old}", f"mote-shell-{new}"])
        finally:
            context.close()
            (static / "protocol.js").write_text(old_protocol)


def _new_version(base: str) -> str:
    with urllib.request.urlopen(base + "/") as r:
        return r.headers["X-Mote-Shell"]
