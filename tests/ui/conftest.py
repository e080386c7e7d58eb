"""The UI tests' shared fixtures: ``browser`` (Debian's Chromium, driven by Playwright) is defined with the
pages' own browser tests (tests/ui/test_views_browser.py) and offered here to every file of tests/ui."""

from tests.ui.test_views_browser import browser  # noqa: F401  (a fixture)
