"""The dashboard judged by a real browser: Debian's Chromium, driven by
selenium through the system chromedriver, headless.

Environment: SHORTFLEET_GATEWAY_URL, SHORTFLEET_API_KEY, and
SHORTFLEET_SCREENSHOTS (a directory; the list, the link view and a
protected link's rules are saved there). A second link is made through the
form with a password and redirect rules (added, removed, reordered, one
refused by the API beside the rules), seen in the list and its view, checked
from outside (form without the password, the rule's target with it) and
edited (password removed, a rule dropped). Redirects are made from outside the browser (urllib, a browser
User-Agent, redirects not followed) and the page must show them live,
without a reload. Exits non-zero on the first failed check.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ["SHORTFLEET_GATEWAY_URL"].rstrip("/")
KEY = os.environ["SHORTFLEET_API_KEY"]
SHOTS = os.environ.get("SHORTFLEET_SCREENSHOTS", "")
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
      "(KHTML, like Gecko) Chrome/126.0 Safari/537.36")
TARGET = "https://example.com/dashboard/browser-test"
RULED = "https://example.com/dashboard/ruled"
MOBILE = "https://m.example.com/dashboard"
GERMAN = "https://example.de/dashboard"
PASSWORD = "correct horse battery"
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


class NoFollow(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def click_redirect(code):
    opener = urllib.request.build_opener(NoFollow)
    req = urllib.request.Request(f"{BASE}/{code}", headers={"User-Agent": UA})
    try:
        opener.open(req, timeout=5)
        raise AssertionError("redirect was followed or not a redirect")
    except urllib.error.HTTPError as e:
        check(e.code == 302, f"GET /{code} answers 302")


def fetch(code, user_agent, password=None):
    """GET /{code} from outside the browser: (status, Location, body)."""
    opener = urllib.request.build_opener(NoFollow)
    headers = {"User-Agent": user_agent}
    if password is not None:
        headers["X-Link-Password"] = password
    req = urllib.request.Request(f"{BASE}/{code}", headers=headers)
    try:
        with opener.open(req, timeout=5) as r:
            return r.status, r.headers.get("Location"), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location"), e.read().decode("utf-8", "replace")


def shot(driver, name):
    """Saves a screenshot (without a passing toast) when asked to."""
    if SHOTS:
        driver.execute_script("document.getElementById('toast').textContent = ''")
        driver.save_screenshot(os.path.join(SHOTS, name))


def rule_rows(scope):
    return scope.find_elements(By.CSS_SELECTOR, "li[data-testid='rule-row']")


def set_rule(driver, row, url, **when):
    """Fills one rule row by its visible labels."""
    for label, value in when.items():
        control = by_label(driver, label, row)
        if control.tag_name == "select":
            Select(control).select_by_value(value)
        else:
            control.clear()
            control.send_keys(value)
    target = by_label(driver, "Send to", row)
    target.clear()
    target.send_keys(url)


def protected_link_with_rules(driver, wait):
    """Creates, checks and edits a link with a password and rules."""
    create = driver.find_element(By.XPATH, "//form[.//h2[.='Shorten a link']]")
    by_label(driver, "URL", create).send_keys(RULED)
    create.find_element(By.XPATH, ".//summary[normalize-space()='More options']").click()
    by_label(driver, "Password", create).send_keys(PASSWORD)
    rules = create.find_element(By.CSS_SELECTOR, "fieldset[data-testid='rules']")
    for _ in range(3):
        button(driver, "Add rule", rules).click()
    rows = rule_rows(rules)
    check(len(rows) == 3, "three rule rows added")
    set_rule(driver, rows[0], "https://example.com/ios", OS="ios")
    set_rule(driver, rows[1], "not a url", Device="mobile")
    set_rule(driver, rows[2], GERMAN, Country="DE")
    button(driver, "Remove rule", rows[0]).click()
    rows = rule_rows(rules)
    check(len(rows) == 2, "a rule removed")
    button(driver, "Up", rows[1]).click()
    rows = rule_rows(rules)
    check(by_label(driver, "Country", rows[0]).get_attribute("value") == "DE"
          and rows[0].find_element(By.CSS_SELECTOR, ".rule-title").text == "Rule 1",
          "the country rule moved up to rule 1")
    check(not button(driver, "Up", rows[0]).is_enabled()
          and not button(driver, "Down", rows[1]).is_enabled(),
          "the ends cannot move further")

    # The API refuses the bad rule URL: the message is shown beside the rules.
    button(driver, "Shorten", create).click()
    error = wait.until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, "fieldset[data-testid='rules'] .field-error[data-field='rules']")))
    check(error.text.startswith("rule 2: url"), f"rule error shown beside the rules: {error.text!r}")
    check(rules.get_attribute("aria-invalid") == "true", "rules marked invalid")
    check(rule_rows(rules)[1].find_elements(By.CSS_SELECTOR, "[aria-invalid='true']") != [],
          "the refused rule's row is marked")
    set_rule(driver, rule_rows(rules)[1], MOBILE)
    button(driver, "Shorten", create).click()
    row = wait.until(EC.visibility_of_element_located(
        (By.XPATH, f"//li[@data-testid='link-row'][.//div[@class='target' and .='{RULED}']]")))
    code = row.get_attribute("data-code")
    check(row.find_element(By.CSS_SELECTOR, "[data-testid='badge-protected']").text == "protected"
          and row.find_element(By.CSS_SELECTOR, "[data-testid='badge-rules']").text == "2 rules",
          f"the new row ({code}) shows protected and 2 rules")

    # From outside: the form without the password, the rules with it.
    status, location, body = fetch(code, IPHONE)
    check(status == 200 and location is None and MOBILE not in body and RULED not in body,
          "without the password: the form, no target")
    status, location, _ = fetch(code, IPHONE, PASSWORD)
    check((status, location) == (302, MOBILE), f"iPhone with the password → the mobile rule ({location})")
    status, location, _ = fetch(code, UA, PASSWORD)
    check((status, location) == (302, RULED), f"desktop with the password → the link's URL ({location})")
    shot(driver, "dashboard-links.png")

    # Its view shows what was saved, in order.
    driver.find_element(By.LINK_TEXT, code).click()
    summary = wait.until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, "[data-testid='rule-summary']")))
    items = [li.text for li in summary.find_elements(By.TAG_NAME, "li")]
    check(items == [f"country DE → {GERMAN}", f"device mobile → {MOBILE}"], f"rules in order: {items}")
    edit = driver.find_element(By.XPATH, "//form[.//h2[.='Edit']]")
    check("protected" in edit.find_element(By.CSS_SELECTOR, "[data-testid='password-state']").text,
          "the edit form says the link is protected")
    check(by_label(driver, "New password", edit).get_attribute("value") == "",
          "the password is never shown")
    rows = rule_rows(edit)
    check(len(rows) == 2
          and by_label(driver, "Country", rows[0]).get_attribute("value") == "DE"
          and by_label(driver, "Device", rows[1]).get_attribute("value") == "mobile"
          and by_label(driver, "Send to", rows[1]).get_attribute("value") == MOBILE,
          "the edit form holds both rules in order")
    every_control_labelled(driver, "protected link view")
    driver.execute_script("document.getElementById('edit-title').scrollIntoView({block: 'start'})")
    shot(driver, "dashboard-rules.png")

    # Edit: remove the password and the country rule.
    by_label(driver, "Remove the password", edit).click()
    button(driver, "Remove rule", rows[0]).click()
    button(driver, "Save", edit).click()
    wait.until(lambda d: d.find_element(By.ID, "toast").text == "Saved")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='password-state']"))
    edit = driver.find_element(By.XPATH, "//form[.//h2[.='Edit']]")
    check(len(rule_rows(edit)) == 1, "one rule left after the edit")
    status, location, _ = fetch(code, IPHONE)
    deadline = time.monotonic() + 3
    while (status, location) != (302, MOBILE) and time.monotonic() < deadline:
        time.sleep(0.1)  # the micro-cache hears of the change within a second
        status, location, _ = fetch(code, IPHONE)
    check((status, location) == (302, MOBILE), "password removed: the iPhone goes straight to the rule")
    driver.find_element(By.LINK_TEXT, "← All links").click()
    wait.until(EC.visibility_of_element_located((By.XPATH, "//h1[.='Your links']")))


def patient(driver, seconds):
    """A wait that looks again when the page re-rendered under it: the app
    replaces a view's elements after a save, so an element found in one poll
    may be gone (stale) by the next call on it."""
    return WebDriverWait(driver, seconds, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))


def by_label(driver, text, scope=None):
    """The control a visible <label> with exactly `text` names."""
    root = scope or driver
    label = root.find_element(By.XPATH, f".//label[normalize-space()='{text}']")
    check(label.is_displayed(), f"label {text!r} is visible")
    return driver.find_element(By.ID, label.get_attribute("for"))


def button(driver, text, scope=None):
    root = scope or driver
    return root.find_element(By.XPATH, f".//button[normalize-space()='{text}']")


def no_horizontal_scroll(driver, where):
    width = driver.execute_script("return window.innerWidth")
    scroll = driver.execute_script("return document.documentElement.scrollWidth")
    check(scroll <= width, f"{where}: no horizontal scrolling at {width}px ({scroll})")


def every_control_labelled(driver, where):
    unlabelled = driver.execute_script("""
        return [...document.querySelectorAll('input, select, textarea')]
          .filter(e => e.type !== 'hidden')
          .filter(e => !e.labels || e.labels.length === 0 || !e.labels[0].textContent.trim())
          .map(e => e.name || e.id);""")
    check(unlabelled == [], f"{where}: every input has a label ({unlabelled})")


def main():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1280,900", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = patient(driver, 10)
    try:
        run(driver, wait)
    finally:
        driver.quit()


def run(driver, wait):
    driver.get(f"{BASE}/app")
    check(driver.current_url == f"{BASE}/app/", "/app redirects to /app/")

    # Sign in.
    by_label(driver, "API key").send_keys(KEY)
    button(driver, "Sign in").click()
    wait.until(EC.visibility_of_element_located((By.XPATH, "//h1[.='Your links']")))
    check(driver.find_element(By.ID, "sign-out").is_displayed(), "signed in")
    check(KEY not in driver.current_url, "the key is not in the URL")
    every_control_labelled(driver, "list")

    # A problem+json error is shown beside the field it names.
    url_field = by_label(driver, "URL")
    url_field.send_keys("not a url")
    button(driver, "Shorten").click()
    error = wait.until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, ".field-error[data-field='url']")))
    check(error.text.strip() != "", f"URL error shown beside the field: {error.text!r}")
    check(url_field.get_attribute("aria-invalid") == "true", "URL marked invalid")

    # Shorten with options.
    url_field.clear()
    url_field.send_keys(TARGET)
    driver.find_element(By.XPATH, "//summary[normalize-space()='More options']").click()
    by_label(driver, "Tags").send_keys("demo, browser")
    button(driver, "Shorten").click()
    row = wait.until(EC.visibility_of_element_located(
        (By.XPATH, f"//li[@data-testid='link-row'][.//div[@class='target' and .='{TARGET}']]")))
    code = row.get_attribute("data-code")
    check(len(code) == 7, f"a row for the new link ({code})")
    check("demo" in row.text and "active" in row.text, "row shows tags and status")
    check(row.find_element(By.CSS_SELECTOR, "[data-testid='link-clicks']").text == "0",
          "row shows 0 clicks")
    check(row.find_element(By.LINK_TEXT, code).get_attribute("href").endswith(f"#/links/{code}"),
          "the code links to its view")
    wait.until(lambda d: d.find_element(By.ID, "live-state").text == "live: live")
    check(True, "live stream connected")

    # Live on the list: redirects elsewhere raise the row's count.
    driver.execute_script("window.__noReload = 1")
    click_redirect(code)
    patient(driver, 5).until(lambda d: d.find_element(
        By.CSS_SELECTOR, f"li[data-code='{code}'] [data-testid='link-clicks']").text == "1")
    check(driver.execute_script("return window.__noReload") == 1, "list count rose without a reload")

    # A protected link with rules, through the form (saves the list's shot).
    protected_link_with_rules(driver, wait)

    # The link's view: chart drawn, live total.
    driver.find_element(By.LINK_TEXT, code).click()
    chart = wait.until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, "svg[data-testid='clicks-chart']")))
    wait.until(lambda d: len(chart.find_elements(By.CSS_SELECTOR, "rect.bar")) >= 7)
    check(True, "the chart is drawn (7 daily bars)")
    button(driver, "24 hours").click()
    wait.until(lambda d: len(d.find_elements(
        By.CSS_SELECTOR, "svg[data-testid='clicks-chart'] rect.bar")) >= 24)
    check(True, "the chart switches to 24 hourly bars")
    total = driver.find_element(By.CSS_SELECTOR, "[data-testid='live-clicks']")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='live-clicks']").text == "1")
    wait.until(lambda d: d.execute_script(
        "const i = document.querySelector('img.qr'); return i && i.complete && i.naturalWidth > 0"))
    check(True, "the QR code is shown")
    every_control_labelled(driver, "link view")
    driver.execute_script("window.__noReload = 2")
    started = time.monotonic()
    for _ in range(3):
        click_redirect(code)
    patient(driver, 6).until(lambda d: d.find_element(
        By.CSS_SELECTOR, "[data-testid='live-clicks']").text == "4")
    elapsed = time.monotonic() - started
    check(driver.execute_script("return window.__noReload") == 2, "no reload")
    check(elapsed < 5, f"live total rose to 4 in {elapsed:.1f} s")
    driver.execute_script("window.scrollTo(0, 0)")
    check(driver.find_element(By.ID, "main").text.count("null") == 0, "no stray 'null' on the page")
    shot(driver, "dashboard-link.png")

    # Narrow screens.
    driver.set_window_size(375, 800)
    time.sleep(0.3)
    no_horizontal_scroll(driver, "link view")

    # Edit.
    edit = driver.find_element(By.XPATH, "//form[.//h2[.='Edit']]")
    tags = by_label(driver, "Tags", edit)
    tags.clear()
    tags.send_keys("demo, edited")
    button(driver, "Save", edit).click()
    wait.until(lambda d: d.find_element(By.ID, "toast").text == "Saved")
    wait.until(lambda d: by_label(d, "Tags", d.find_element(
        By.XPATH, "//form[.//h2[.='Edit']]")).get_attribute("value") == "demo, edited")
    check(True, "edited tags saved")

    # Keyboard: the period buttons and links are reachable with Tab.
    # The view re-renders after the save (its live totals too), so the
    # focused element can go stale between finding it and pressing Tab:
    # each step is a wait that looks again then (`patient`).
    # Keys go to whatever has focus, as a keyboard's do (ActionChains):
    # ChromeDriver 156.0.8078.108 refuses keys sent to <body> as "not
    # interactable".
    def tab(d):
        ActionChains(d).send_keys(Keys.TAB).perform()
        focused = d.switch_to.active_element
        return (focused.tag_name, focused.text.strip())

    driver.execute_script("document.activeElement && document.activeElement.blur()")
    reached = set()
    for _ in range(40):
        reached.add(patient(driver, 5).until(tab))
    check(("button", "Sign out") in reached and ("button", "Save") in reached,
          "Sign out and Save are reachable by keyboard")

    # Back to the list at 375 px, delete with confirmation.
    driver.find_element(By.LINK_TEXT, "← All links").click()
    row = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"li[data-code='{code}']")))
    no_horizontal_scroll(driver, "list")
    driver.set_window_size(1280, 900)
    button(driver, "Delete", row).click()
    dialog = wait.until(EC.visibility_of_element_located((By.ID, "confirm")))
    check(code in dialog.text, "delete asks for confirmation")
    driver.find_element(By.ID, "confirm-ok").click()
    wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, f"li[data-code='{code}']")))
    check(True, "the row is gone after delete")

    # Sign out forgets the key.
    driver.find_element(By.ID, "sign-out").click()
    wait.until(EC.visibility_of_element_located((By.XPATH, "//h1[.='Sign in']")))
    check(driver.execute_script("return sessionStorage.length") == 0, "sign out forgets the key")

    # Console: nothing but the deliberate 400 of the invalid URL.
    logs = driver.get_log("browser")
    errors = [l for l in logs if l["level"] == "SEVERE"
              and not ("/api/v1/links" in l["message"] and "400" in l["message"])]
    check(errors == [], f"no console errors: {json.dumps(errors, indent=1)}")
    print("dashboard: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure and exit non-zero
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
