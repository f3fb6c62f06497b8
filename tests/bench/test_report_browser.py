"""report.html in headless Chromium at the review's window size (1400 px): every figure loads and fits,
no table cell wraps, no table or page scrolls sideways; and a screenshot is taken."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from bench_folder import ACCURACY, write_bench

from plmtune.bench import report

CHECK = """<script>
window.addEventListener('load', () => {
  const problems = [], width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > width) problems.push('the page scrolls sideways');
  for (const img of document.images) {
    const box = img.getBoundingClientRect();
    if (!img.complete || img.naturalWidth === 0) problems.push('not loaded: ' + img.alt);
    if (box.left < 0 || box.right > width) problems.push('cut off: ' + img.alt);
    if (box.width < img.width - 1) problems.push('shrunk: ' + img.alt);
  }
  for (const cell of document.querySelectorAll('th, td')) {
    const range = document.createRange();
    range.selectNodeContents(cell);
    const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (lines.size > 1) problems.push('wraps: ' + cell.textContent);
  }
  for (const box of document.querySelectorAll('.scroll'))
    if (box.scrollWidth > box.clientWidth) problems.push('a table scrolls sideways');
  document.body.setAttribute('data-problems', JSON.stringify(problems));
  document.body.setAttribute('data-images', String(document.images.length));
});
</script></body>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1400,3000", "--virtual-time-budget=10000"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (setup.sh installs it)")
def test_the_report_lays_out_in_a_browser_without_wrapping_clipping_or_scrolling(tmp_path):
    names = ["vanilla", "linear_probe", "setfit", "majority", "child_tuning_d", "llrd", "mixout"]
    accuracy = {n: [a + 0.01 * i for a in ACCURACY["llrd"]] for i, n in enumerate(names)}
    out = write_bench(tmp_path / "b", tasks=("cola", "sst2"), accuracy=accuracy)
    _, page = report.write_report(out)
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", CHECK))
    dom = subprocess.run(["chromium", *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          probe.as_uri()], check=False, capture_output=True, text=True, timeout=180)
    found = re.search(r'data-problems="([^"]*)" data-images="(\d+)"', dom.stdout)
    assert found, dom.stdout[-2000:] + dom.stderr[-2000:]
    assert json.loads(html.unescape(found.group(1))) == []
    assert int(found.group(2)) == 8  # 4 figures for each of the 2 tasks
    assert "Δ MCC [95% CI]" in dom.stdout and "A difference whose interval contains 0" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                    page.as_uri()], check=False, capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 50_000
