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


# Appended likewise: the page's width against the window's, and each table cell or gallery caption
# whose box is narrower than one of its words (a label broken mid-word, a number over two lines).
_LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const canvas = document.createElement("canvas").getContext("2d");
  const broken = [];
  for (const cell of document.querySelectorAll("th, td, figcaption")) {
    const style = getComputedStyle(cell);
    canvas.font = style.font;
    const room = cell.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    for (const word of cell.innerText.split(/\\s+/)) {
      if (word && canvas.measureText(word).width > room + 1 && !cell.querySelector("wbr")) {
        broken.push(word);
      }
    }
  }
  const out = document.createElement("pre");
  out.id = "layout";
  out.textContent = JSON.stringify({
    scroll_width: document.documentElement.scrollWidth, window_width: window.innerWidth, broken: broken,
  });
  document.body.appendChild(out);
});
</script>"""


def image_states(page: str, workdir: str) -> list[dict]:
    """Each <img> of `page` (an HTML file with its files beside it) as loaded by Chromium: src, naturalWidth."""
    return _probed(page, workdir, _PROBE, "image-states")


def layout(page: str, workdir: str) -> dict:
    """`page` laid out by Chromium in a 1280 x 900 window: {scroll_width, window_width, broken:
    the words wider than the cell or caption holding them (one without a <wbr> in it)}."""
    return _probed(page, workdir, _LAYOUT_PROBE, "layout")


def _probed(page: str, workdir: str, probe: str, element_id: str):
    """`probe` (a script writing JSON into <pre id=element_id>) run on a copy of `page` in Chromium."""
    browser = chromium_or_skip()
    copy = os.path.join(workdir, f"page-{element_id}")
    shutil.copytree(os.path.dirname(page), copy)
    probed = os.path.join(copy, os.path.basename(page))
    with open(probed, encoding="utf-8") as f:
        text = f.read()
    assert "</body>" in text
    with open(probed, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", probe + "</body>"))
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
            "--window-size=1280,900",
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
    found = re.search(rf'<pre id="{element_id}">(.*?)</pre>', out.stdout, re.S)
    assert found, f"the probe did not run; Chromium printed: {out.stdout[:500]!r} {out.stderr[-1000:]!r}"
    return json.loads(html.unescape(found.group(1)))
