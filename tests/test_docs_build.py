"""The documentation site: ``mkdocs build --strict``, then a real browser on the built site.

The build runs once per module into a temporary folder. The browser checks serve that folder
on 127.0.0.1 (a random free port) and drive Debian's headless Chromium through Selenium:
every page of the navigation renders with its title, images and no console error, the
footer links each page to the previous and next one, the framework tabs switch together,
every figure of the loss page loads, search finds the loss page. They skip, saying why,
where mkdocs, Selenium, chromium or chromedriver is missing.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 20


def nav_pages() -> list[str]:
    """The Markdown pages of mkdocs.yml's ``nav``, in reading order."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install '.[docs]')")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def walk(items) -> list[str]:
        pages = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            pages += walk(value) if isinstance(value, list) else [value]
        return pages

    return walk(config["nav"])


def _url(page: str) -> str:
    """The site path of a page: ``faq.md`` -> ``faq/``, ``index.md`` -> ``""``."""
    stem = page.removesuffix(".md")
    return "" if stem == "index" else f"{stem}/"


def _docs_files() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*")
            if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "pymdownx",
                   "matplotlib"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    before = _docs_files()
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out),
         "--config-file", str(ROOT / "mkdocs.yml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    assert _docs_files() == before, "the build wrote into docs/"
    return out


def test_nav_has_every_page():
    pages = nav_pages()
    assert {"index.md", "install.md", "loss.md", "layouts.md", "migrating.md",
            "integrations.md", "faq.md", "conformance.md", "performance.md", "distributed.md",
            "large-batches.md", "experiments.md", "guarantees.md", "api/core.md",
            "api/torch.md", "api/jax.md", "api/tf.md", "api/keras.md", "spec.md",
            "changelog.md"} <= set(pages), pages
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")
               if p.parts[-2] != "data"}
    assert on_disk <= set(pages), f"pages not in the nav: {sorted(on_disk - set(pages))}"


def test_build_has_every_page_and_figure(site: Path):
    for page in nav_pages():
        assert (site / _url(page) / "index.html").is_file(), page
    for figure in ("logit_map.png", "gradient.png", "floor.png"):
        data = (site / "generated" / figure).read_bytes()
        assert data.startswith(b"\x89PNG"), figure
        assert len(data) > 10_000, figure
    core = (site / "api/core/index.html").read_text(encoding="utf-8")
    assert 'id="tfree_core.info_nce"' in core
    loss = (site / "loss/index.html").read_text(encoding="utf-8")
    assert "tfree:floor-table" not in loss
    assert "temperature-free" in loss
    for page in site.rglob("*.html"):
        assert "<!-- tfree:" not in page.read_text(encoding="utf-8"), f"a marker left in {page}"
    assert "googleapis" not in (site / "index.html").read_text(encoding="utf-8")
    changelog = (site / "changelog/index.html").read_text(encoding="utf-8")
    assert "0.1.0" in changelog, "CHANGELOG.md not included"
    assert "--8&lt;--" not in changelog, "the snippet marker was not replaced"


def _text(html: str) -> str:
    import html as html_module
    import re

    return html_module.unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.parametrize("module", ["core", "torch", "jax", "tf", "keras"])
def test_api_pages_render_the_docstrings(site: Path, module: str):
    """No reStructuredText left as text, examples rendered as code, attributes with their
    own docstring (not their type's)."""
    html = (site / "api" / module / "index.html").read_text(encoding="utf-8")
    text = _text(html)
    for markup in (":func:", ":class:", ":meth:", ":data:", ":mod:", ">>>", "=====", "::\n"):
        assert markup not in text, f"api/{module}: {markup!r} rendered as text"
    examples = html.count('<span class="doc-section-title">Examples:</span>')
    assert examples >= 1, f"api/{module}: no Examples section"
    assert html.count('<span class="kn">import</span>') >= examples, f"api/{module}: no code"
    for leaked in ("Convert a string or number", "Built-in immutable sequence"):
        assert leaked not in text, f"api/{module}: an attribute shows its type's docstring"
    assert "ContrastiveLossFunction" not in text


def test_nothing_generated_is_tracked():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "docs/generated", "site"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked == []


# --- the browser -------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def base_url(site: Path):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def driver(base_url, tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium is not installed (pip install '.[docs]')")
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} not found: apt-get install chromium chromium-driver "
                        f"(Debian package {package})")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-default-apps", "--disable-extensions", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER)
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_page_load_timeout(WAIT_S)
    yield browser
    browser.quit()


def _wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message)


def _console_errors(driver) -> list[str]:
    return [f"{e['level']}: {e['message']}" for e in driver.get_log("browser")
            if e["level"] in ("SEVERE", "ERROR")]


@pytest.mark.parametrize("page", nav_pages() if importlib.util.find_spec("yaml") else [])
def test_nav_page_renders(driver, base_url, page):
    """Every page of the navigation: a title, every image loaded, no console error."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/{_url(page)}")
    heading = driver.find_elements(By.CSS_SELECTOR, "article h1")
    assert heading, f"{page}: no title"
    assert heading[0].text.strip(), f"{page}: an empty title"
    _wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('article img')].every(i => i.complete)"),
        f"{page}: images did not finish loading")
    broken = driver.execute_script(
        "return [...document.querySelectorAll('article img')]"
        ".filter(i => i.naturalWidth === 0).map(i => i.src)")
    assert broken == [], f"{page}: images that did not load: {broken}"
    assert _console_errors(driver) == [], page


def test_footer_links_previous_and_next_page(driver, base_url):
    """Material's footer navigation (``navigation.footer``): each page links the pages
    before and after it in the nav, and following "next" from the home page walks it."""
    from selenium.webdriver.common.by import By

    pages = nav_pages()

    def footer() -> tuple[str | None, str | None]:
        links = {}
        for kind in ("prev", "next"):
            found = driver.find_elements(By.CSS_SELECTOR, f"a.md-footer__link--{kind}")
            links[kind] = urlsplit(found[0].get_attribute("href")).path if found else None
        return links["prev"], links["next"]

    driver.get(base_url + "/")
    assert footer() == (None, "/" + _url(pages[1])), footer()
    for i in range(1, 4):  # follow "next" through the first pages
        driver.find_element(By.CSS_SELECTOR, "a.md-footer__link--next").click()
        _wait(driver, lambda d, i=i: urlsplit(d.current_url).path == "/" + _url(pages[i]),
              f"next did not lead to {pages[i]}: {driver.current_url}")
        previous, following = footer()
        assert previous == "/" + _url(pages[i - 1]), (pages[i], previous)
        assert following == "/" + _url(pages[i + 1]), (pages[i], following)
    driver.get(f"{base_url}/{_url(pages[-1])}")
    assert footer() == ("/" + _url(pages[-2]), None), footer()


def test_home_page_renders(driver, base_url):
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    assert "tfree" in driver.title
    h1 = driver.find_element(By.CSS_SELECTOR, "article h1")
    assert "temperature-free" in h1.text
    assert _console_errors(driver) == []


def test_framework_tabs_switch_together(driver, base_url):
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    groups = driver.find_elements(By.CSS_SELECTOR, "article .tabbed-set")
    assert len(groups) >= 2, "the home page should have linked tab groups"

    def selected() -> list[str]:
        return driver.execute_script(
            "return [...document.querySelectorAll('article .tabbed-set')].map(set => {"
            "  const input = set.querySelector(':scope > input:checked');"
            "  return set.querySelector(`label[for='${input.id}']`).textContent.trim(); });"
        )

    assert set(selected()) == {"PyTorch"}
    label = groups[0].find_element(By.XPATH, ".//label[normalize-space()='JAX']")
    label.click()
    _wait(driver, lambda d: set(selected()) == {"JAX"}, f"tabs did not all switch: {selected()}")
    visible = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "article .tabbed-block")
               if b.is_displayed()]
    assert any("tfree_jax" in text for text in visible), visible
    assert not any("tfree_torch" in text for text in visible), visible
    assert _console_errors(driver) == []


def test_loss_page_figures_load(driver, base_url):
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/loss/")
    images = driver.find_elements(By.CSS_SELECTOR, "article img")
    sources = [img.get_attribute("src") for img in images]
    assert sum("/generated/" in src for src in sources) >= 3, sources
    _wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('article img')].every(i => i.complete)"),
        "images did not finish loading")
    widths = driver.execute_script(
        "return [...document.querySelectorAll('article img')].map(i => [i.src, i.naturalWidth])")
    assert all(width > 0 for _, width in widths), widths
    assert _console_errors(driver) == []


def test_search_finds_the_loss_page(driver, base_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(base_url + "/")
    driver.find_element(By.CSS_SELECTOR, "label.md-search__icon, .md-search__form").click()
    box = _wait(driver, ec.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input")),
                "no search box")
    box.click()
    box.send_keys("temperature")

    from selenium.common.exceptions import StaleElementReferenceException

    def paths(d) -> list[str]:
        # The result list is re-rendered as the query settles: a link read while that
        # happens is stale, and the wait simply reads the list again.
        try:
            links = d.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")
            return [urlsplit(a.get_attribute("href")).path for a in links]
        except StaleElementReferenceException:
            return []

    _wait(driver, paths, "search returned no results")
    _wait(driver, lambda d: "/loss/" in paths(d),
          f"search for 'temperature' did not return the loss page: {paths(driver)}")
    assert _console_errors(driver) == []
