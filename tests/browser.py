"""A real headless Chromium for the tests: load a page from disk and report how each <img> loaded.

Debian's `chromium` package (.ci/run installs it where missing). Tests that need
it skip, saying so, when it is not on the PATH.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")

# Appended to a copy of the page: after every image has loaded or failed, write their states into the DOM.
_PROBE = """<script>
window.addEventListener("load", () => {
  const states = Array.from(document.images).map((img) => ({
    src: img.getAttribute("src"), complete: img.complete, naturalWidth: img.naturalWidth,
  }));
  const out = document.createElement("pre");
  out.id = "image-states";
  out.textContent = JSON.stringify(states);
  document.body.appendChild(out);
});
</script>"""


def chromium_or_skip() -> str:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no headless Chromium on this machine (.ci/run installs Debian's `chromium`; apt-get install chromium)"
    )


def image_states(page: str, workdir: str) -> list[dict]:
    """Each <img> of `page` (an HTML file with its files beside it) as loaded by Chromium: src, naturalWidth."""
    browser = chromium_or_skip()
    copy = os.path.join(workdir, "page")
    shutil.copytree(os.path.dirname(page), copy)
    probed = os.path.join(copy, os.path.basename(page))
    with open(probed, encoding="utf-8") as f:
        text = f.read()
    assert "</body>" in text
    with open(probed, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", _PROBE + "</body>"))
    out = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={os.path.join(workdir, 'chromium-profile')}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            "file://" + os.path.abspath(probed),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(r'<pre id="image-states">(.*?)</pre>', out.stdout, re.S)
    assert found, f"the probe did not run; Chromium printed: {out.stdout[:500]!r} {out.stderr[-1000:]!r}"
    return json.loads(html.unescape(found.group(1)))
