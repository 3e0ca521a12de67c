#!/usr/bin/env python3
"""Browser test of the dalc dashboard, with Playwright driving Debian's Chromium.

    python3 services/http/tests/browser/dashboard_test.py BASE_URL SCREENSHOT_DIR

e.g. python3 services/http/tests/browser/dashboard_test.py http://127.0.0.1:8080 /tmp/shots

With auth on, set DALC_API_KEY: the test then answers the dashboard's API-key prompt.

It submits "1 + 1" (sync) through the form and sees SUCCEEDED with result 2 without a reload,
sees the task in the list and its detail, sees a worker's total go up on the stats panel,
follows an async task to its result, submits "1 +" with the keyboard and sees the
INVALID_ARGUMENT message, and saves screenshots (desktop and phone) into SCREENSHOT_DIR. With
a key, it first types a wrong one and sees the prompt say why it was refused. On a phone, the
task chosen in the list brings its detail (below the list there) into view. Any console error
on the page (a CSP violation, a script error) fails the test.

Installs Playwright's Python package from PyPI and Debian's chromium when missing; never runs
`playwright install` (its browser download does not work here).
"""

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


def ensure_dependencies():
    # Dashboard tests run side by side (the open gateway and the keyed one): one installs what
    # is missing while the others wait, then finds it there (two apt-gets at once fail on
    # dpkg's lock).
    lock_path = os.path.join(tempfile.gettempdir(), "dalc-browser-test-dependencies.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        install_missing_dependencies()


def install_missing_dependencies():
    if importlib.util.find_spec("playwright") is None:
        print("installing playwright from PyPI...", file=sys.stderr)
        pip = [sys.executable, "-m", "pip", "install", "-q", "playwright"]
        for extra in ([], ["--user"], ["--user", "--break-system-packages"]):
            if subprocess.run(pip + extra).returncode == 0:
                break
        else:
            sys.exit("could not install playwright")
        import site

        # A --user install lands in a directory this interpreter may not have on its path yet.
        user_site = site.getusersitepackages()
        if user_site not in sys.path:
            sys.path.append(user_site)
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None:
            sys.exit(f"{CHROMIUM} is missing and apt-get is not available")
        print("installing chromium from Debian...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "chromium"], env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True)
            subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, check=True)


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def wait_until(predicate, message, timeout=TIMEOUT_MS / 1000):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise Failure(message)


def open_dashboard(browser, base_url, api_key, **context_options):
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    # Chromium logs every 4xx answer as a console error; those are the API's expected refusals
    # (400 for "1 +", 401 before the key), not faults of the page.
    expected = "Failed to load resource: the server responded with a status of 4"
    page.on(
        "console",
        lambda m: errors.append(m.text)
        if m.type == "error" and not m.text.startswith(expected)
        else None,
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base_url + "/")
    if api_key:
        # The first poll answers 401 and the dashboard asks for the key.
        dialog = page.locator("#auth-dialog")
        dialog.wait_for(state="visible", timeout=5_000)
        check(page.locator("#auth-error").is_hidden(), "an error shown before any key was sent")
        # A wrong key first: the prompt comes back and says why.
        # By its label, as a person or a screen reader finds it (strict: one element).
        page.get_by_label("API key").fill(api_key + "-wrong")
        page.click("#api-key-save")
        page.locator("#auth-error").filter(has_text="unknown API key").wait_for()
        check(dialog.is_visible(), "the prompt is gone after a refused key")
        page.get_by_label("API key").fill(api_key)
        page.click("#api-key-save")
        page.locator("#auth-error").wait_for(state="hidden")
    page.wait_for_selector("#connection.connection-live")
    return context, page, errors


def in_view(page, selector):
    """Whether the top of `selector` is within the viewport."""
    top = page.locator(selector).evaluate("e => e.getBoundingClientRect().top")
    return 0 <= top < page.viewport_size["height"]


def worker_total(page):
    totals = page.eval_on_selector_all(
        '#workers tr[data-worker-id] [data-field="total"]',
        "cells => cells.map(c => parseInt(c.textContent, 10) || 0)",
    )
    return sum(totals)


def run(base_url, screenshot_dir, api_key):
    from playwright.sync_api import expect, sync_playwright

    os.makedirs(screenshot_dir, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context, page, errors = open_dashboard(
                # Playwright's default size: a laptop's, where list and detail sit side by side.
                browser, base_url, api_key, viewport={"width": 1280, "height": 720}
            )
            # Give the stats panel its first answer, then note where the workers stand.
            # A locator wait, not wait_for_function: that one evaluates a string in the page,
            # which the dashboard's CSP (no 'unsafe-eval') rightly refuses.
            expect(page.locator("#queue-depth")).not_to_have_text("–")
            before = worker_total(page)
            print(f"workers' total before: {before}")
            page.evaluate("window.__noReload = true")

            # 1. Sync submission through the form, found by labels and roles (Playwright's
            # locators are strict: a label naming two elements fails).
            page.get_by_label("Wait for the result").check()
            page.get_by_label("Expression").fill("1 + 1")
            page.get_by_role("button", name="Submit").click()
            statuses = page.get_by_label("Status").count()
            check(statuses == 1, f"the label Status names {statuses} elements")
            status = page.locator('#submit-result [data-field="status"]')
            status.filter(has_text="SUCCEEDED").wait_for()
            result = page.locator('#submit-result [data-field="result"]').text_content()
            check(result == "2", f"result is {result!r}, expected '2'")
            check(page.evaluate("window.__noReload === true"), "the page reloaded")
            task_id = page.get_attribute("#submit-result [data-task-id]", "data-task-id")
            check(task_id, "the result names no task id")
            print(f"1 + 1 = {result} (task {task_id})")

            # 2. The task appears in the list, SUCCEEDED, and its detail shows the timeline.
            row = page.locator(f'#tasks tr[data-task-id="{task_id}"]')
            row.wait_for()
            page.wait_for_selector(f'#tasks tr[data-task-id="{task_id}"][data-status="SUCCEEDED"]')
            row.locator("button").click()
            detail = page.locator("#task-detail")
            detail.locator(f'[data-field="id"]:has-text("{task_id}")').wait_for()
            check(
                detail.locator('[data-field="result"]').text_content().strip() == "2",
                "the detail does not show the result",
            )
            for field in ("createdAt", "startedAt", "finishedAt", "workerId", "attempts"):
                text = detail.locator(f'[data-field="{field}"]').text_content().strip()
                check(text and text != "–", f"the detail's {field} is empty")
            # Each documented hook names one element (Playwright's locators are strict).
            status_text = detail.locator('[data-field="status"]').text_content().strip()
            check(status_text == "SUCCEEDED", f"the detail's status is {status_text!r}")
            wait_until(lambda: in_view(page, "#task-detail"), "the detail is out of view")
            print("task listed, detail shown")

            # 3. A worker's total goes up on the stats panel (live, no reload).
            after = wait_until(
                lambda: (lambda n: n if n > before else None)(worker_total(page)),
                "no worker's total went up",
            )
            print(f"workers' total after: {after}")

            # 4. Async: follow the task over SSE to its result.
            page.check("#mode-async")
            page.fill("#expression", "2 * 3")
            page.click("#submit")
            page.locator('#submit-result [data-field="status"]').filter(
                has_text="SUCCEEDED"
            ).wait_for()
            async_result = page.locator('#submit-result [data-field="result"]').text_content()
            check(async_result == "6", f"async result is {async_result!r}, expected '6'")
            print(f"async 2 * 3 = {async_result}")

            # 5. An invalid expression, submitted with the keyboard: the API's error by the form.
            page.check("#mode-sync")
            page.fill("#expression", "1 +")
            page.focus("#expression")
            page.keyboard.press("Enter")
            error = page.locator("#submit-error")
            error.filter(has_text="INVALID_ARGUMENT").wait_for()
            print(f"error shown: {error.text_content()}")
            check(
                page.get_attribute("#expression", "aria-invalid") == "true",
                "the input is not marked invalid",
            )

            # Screenshots: the desktop with the error and the list; then a valid result again.
            page.screenshot(path=os.path.join(screenshot_dir, "desktop-error.png"), full_page=True)
            page.fill("#expression", "1 + 1")
            page.click("#submit")
            page.locator('#submit-result [data-field="status"]').filter(
                has_text="SUCCEEDED"
            ).wait_for()
            check(error.is_hidden(), "the old error is still shown")
            page.locator(f'#tasks tr[data-task-id="{task_id}"] button').click()
            detail.locator(f'[data-field="id"]:has-text("{task_id}")').wait_for()
            page.screenshot(path=os.path.join(screenshot_dir, "desktop.png"), full_page=True)
            check(not errors, f"console errors: {errors}")
            context.close()

            # Phone-sized viewport.
            context, page, errors = open_dashboard(
                browser,
                base_url,
                api_key,
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
            )
            page.fill("#expression", "(1 + 2) * 3")
            page.click("#submit")
            page.locator('#submit-result [data-field="status"]').filter(
                has_text="SUCCEEDED"
            ).wait_for()
            page.wait_for_selector("#tasks tr[data-task-id]")
            width = page.evaluate("document.documentElement.scrollWidth")
            check(width <= 390, f"the page scrolls sideways on a phone ({width}px wide)")
            # One column: the detail lies below the list, and choosing a task brings it in view.
            page.locator("#tasks tr[data-task-id] button").first.click()
            page.locator('#task-detail [data-field="id"]').wait_for()
            wait_until(lambda: in_view(page, "#task-detail"), "the detail stays out of view")
            page.screenshot(path=os.path.join(screenshot_dir, "phone.png"), full_page=True)
            page.screenshot(path=os.path.join(screenshot_dir, "phone-viewport.png"))
            check(not errors, f"console errors: {errors}")
            context.close()
        finally:
            browser.close()
    print(f"screenshots in {screenshot_dir}")


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} BASE_URL SCREENSHOT_DIR")
    base_url, screenshot_dir = sys.argv[1].rstrip("/"), sys.argv[2]
    ensure_dependencies()
    try:
        run(base_url, screenshot_dir, os.environ.get("DALC_API_KEY", ""))
    except Failure as failure:
        print(f"FAIL: {failure}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # a Playwright timeout names the selector it waited for
        print(f"FAIL: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
