"""MLflow's UI as a person sees it: Debian's Chromium driven headless through Selenium (`make browser` installs them),
with what the tests read off a page (a chart card's lines and legend, the text a page shows) and its screenshots."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from helpers import wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# headless on a machine without a display or a network: no GPU, no sandbox (root), no background calls home
FLAGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=1600,1000 --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync"
).split()


def missing() -> str | None:
    """Why no browser can run here (a line saying how to get one), or None."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return f"{CHROMIUM} and {CHROMEDRIVER} are needed: `make browser` (apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def chromium() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in FLAGS:
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str, until: str, timeout: float = 90.0) -> str:
    """Load ``url`` and wait until the page shows ``until`` (the UI renders a few seconds after loading); returns the
    page's text."""
    driver.get(url)

    def shown() -> str | None:
        text = driver.find_element("tag name", "body").text
        return text if until in text else None

    try:
        return wait_until(shown, timeout, f"{url} showing {until!r}")
    except RuntimeError as e:
        raise AssertionError(f"{e}; it shows:\n{driver.find_element('tag name', 'body').text[:2000]}") from None


def close_assistant(driver) -> None:
    """Close MLflow's assistant panel where it opened (a third of the window)."""
    for button in driver.find_elements("css selector", "button[aria-label='Close']"):
        with contextlib.suppress(Exception):
            button.click()


@dataclass(frozen=True)
class Chart:
    title: str
    legend: list[str]  # one entry per run plotted: "<run name> (<metric>)"
    colours: set[str]  # the stroke colours of the lines drawn with points
    points: list[int]  # points per line drawn


def chart(driver, title: str) -> Chart:
    """The chart card titled ``title`` in the runs' chart view: what it draws."""
    heading = driver.find_element("css selector", f"h4[title='{title}']")
    card = heading
    while not card.find_elements("css selector", ".js-plotly-plot"):
        card = card.find_element("xpath", "..")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
    lines = []
    for trace in card.find_elements("css selector", "g.scatterlayer g.trace"):
        points = len(trace.find_elements("css selector", "path.point"))
        stroke = [p.value_of_css_property("stroke") for p in trace.find_elements("css selector", "path.js-line")]
        if points:
            lines.append((points, stroke[0] if stroke else ""))
    legend = [line for line in card.text.splitlines() if line.endswith(f"({title})")]
    return Chart(title, legend, {c for _, c in lines}, [n for n, _ in lines])


def screenshot(driver, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
