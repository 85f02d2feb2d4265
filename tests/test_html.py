"""``ltc html``: one self-contained page, opened in headless Chromium (the ``chrome`` fixture).

A fixture notebook (one kernel start) writes methods metrics, two figure files and an inline
image; the page must show the methods table, every figure decoded by the browser, the
rendered notebook, parameters and versions, and load nothing from elsewhere. A screenshot is
kept under $LTC_ARTIFACTS (CI) or the test's tmp folder.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import base64  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import nbformat  # noqa: E402
import pytest  # noqa: E402
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook  # noqa: E402

from ltcutils import workbook as wb  # noqa: E402
from ltcutils.workbook import html as wh  # noqa: E402


def png_bytes(width: int, height: int, rgb=(200, 40, 40)) -> bytes:
    """A solid-colour PNG written by hand (no imaging library in the kernel)."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


BODY = '''import base64
from pathlib import Path
from IPython.display import Image, display
import ltcutils as ltc

figs = Path(output_dir) / "figures"
figs.mkdir(parents=True, exist_ok=True)
(figs / "05_wide.png").write_bytes(base64.b64decode(WIDE))
(figs / "05_tall.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="90">'
                                  '<rect width="40" height="90" fill="teal"/></svg>')
display(Image(data=base64.b64decode(INLINE)))  # an inline figure in the executed notebook

def row(wg, avg):
    return {"wg": wg, "avg_sample": avg, "gap": avg - wg, "wg_ci_low": wg - 2, "wg_ci_high": wg + 2}

metrics = {"zero_shot": row(50.0 + seed, 80.0), "ltc": row(71.0, 84.0)}
ltc.workbook.write_metrics("05_compare_methods", metrics, output_dir)'''


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("html")
    nb_dir = base / "nb"
    nb_dir.mkdir()
    params = (f'seed = 0  # the seed\nWIDE = "{base64.b64encode(png_bytes(120, 30)).decode()}"  # a figure\n'
              f'INLINE = "{base64.b64encode(png_bytes(33, 44, (20, 20, 200))).decode()}"  # an inline image\n'
              'output_dir = "outputs"  # the run folder')
    cells = [new_markdown_cell("# 05 fixture: figures and methods metrics"),
             new_code_cell(params, metadata={"tags": ["parameters"]}), new_code_cell(BODY)]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, str(nb_dir / "05_compare_methods.ipynb"))
    result = wb.run_workbook(["05"], params={"seed": 3}, out=base / "run", notebooks_dir=nb_dir, progress=False)
    assert result.ok
    return base / "run"


def test_figure_files_and_data_uris(run_dir, tmp_path):
    figs = wh.figure_files(run_dir)
    assert [f.relative_to(run_dir).as_posix() for f in figs] == ["figures/05_tall.svg", "figures/05_wide.png"]
    (run_dir / "cache").mkdir(exist_ok=True)
    (run_dir / "cache" / "x.png").write_bytes(png_bytes(2, 2))  # caches are not figures
    assert len(wh.figure_files(run_dir)) == 2
    uri = wh.data_uri(figs[1])
    assert uri.startswith("data:image/png;base64,") and base64.b64decode(uri.split(",", 1)[1]) == figs[1].read_bytes()
    shutil.rmtree(run_dir / "cache")


@pytest.mark.browser
def test_html_page_in_headless_chromium(run_dir, tmp_path, chrome):
    out = tmp_path / "page" / "report.html"
    assert wb.main(["html", str(run_dir), "--out", str(out)]) == 0
    chrome.get(out.resolve().as_uri())
    js = chrome.execute_script
    # the methods table, cells as `ltc report` writes them (zero-shot WG = 50 + seed 3)
    cells = js("return Array.from(document.querySelectorAll('table.paper-table tbody tr'))"
               ".map(r => Array.from(r.children).map(c => c.textContent));")
    assert cells == [["zero-shot", "53.0 [51.0,55.0]", "80.0", "27.0"], ["LTC", "71.0 [69.0,73.0]", "84.0", "13.0"]]
    assert "Avg(sample) = sample-weighted accuracy" in js("return document.querySelector('table.paper-table caption').textContent")
    # every figure file, decoded by the browser at its own size
    figs = js("return Array.from(document.querySelectorAll('figure.run-figure img'))"
              ".map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
    assert figs == [["figures/05_tall.svg", True, 40, 90], ["figures/05_wide.png", True, 120, 30]]
    # the executed notebook, rendered, with its inline image
    js("document.querySelectorAll('details').forEach(d => d.open = true);")
    inline = js("return Array.from(document.querySelectorAll('#nb-05_compare_methods img'))"
                ".map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
    assert inline == [[True, 33, 44]]
    text = js("return document.body.innerText;")
    assert "display(Image(data=base64.b64decode(INLINE)))" in text  # the notebook's source is shown
    params = js("return Object.fromEntries(Array.from(document.querySelectorAll("
                "'details.params[data-notebook=\"05_compare_methods\"] tr')).map(r => [r.children[0].textContent, "
                "r.children[1].textContent]));")
    assert params["seed"] == "3" and params["WIDE"].startswith("iVBOR") and "output_dir" not in params
    assert "05_compare_methods (ok" in text  # the notebook's status
    assert "papermill" in text and "python" in text  # software versions
    # self-contained: nothing is fetched from elsewhere
    external = js("return Array.from(document.querySelectorAll('[src], link[href], script[src]'))"
                  ".map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => !u.startsWith('data:'));")
    assert external == []
    js("window.scrollTo(0, 0);")
    shots = Path(os.environ.get("LTC_ARTIFACTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "ltc_html_report.png"
    assert chrome.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_html_of_two_runs_and_errors(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    m = json.loads((other / "metrics" / "05_compare_methods.json").read_text())
    m["ltc"]["wg"] = 75.0
    wb.write_metrics("05_compare_methods", m, other)
    path = wh.html_report([run_dir, other], out=tmp_path / "cmp.html", notebooks=False)
    page = path.read_text()
    assert page.count("<figure class=\"run-figure\">") == 4 and "75.0 [69.0,73.0]" in page
    assert "id=\"nb-" not in page  # notebooks left out
    with pytest.raises(FileNotFoundError):
        wh.html_report([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(wb.WorkbookError, match="no executed notebooks"):
        wh.html_report([tmp_path / "empty"])
