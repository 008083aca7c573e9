"""The status page (`/` and `/monitors/<id>` in a browser): what it shows to
whom, over HTTP, and in a real headless browser (playwright driving
Debian's chromium: no browser is downloaded) against a real cronmon with a
fast sweeper, on loopback only.

With CRONMON_SCREENSHOT_DIR set, the browser test writes the README's
screenshot there (status-page.png); CI leaves it unset, so the tree is
never written to by a test run."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from exporter.web.app import create_app
from exporter.web.keys import CORE, SETTINGS, SWEEPER

from .conftest import wait_for, write_config

KEY = "status-page-ping-key"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
TOKENS = {"T_A": "token-team-a", "T_AR": "token-team-a-read", "T_B": "token-team-b"}
A, A_READ, B = ({"Authorization": f"Bearer {t}", **BROWSER} for t in TOKENS.values())

CONFIG = """
api_tokens:
  - {name: alice, env: T_A, owner: alice, team: team-a, scope: write}
  - {name: alice-ro, env: T_AR, owner: alice-ro, team: team-a, scope: read}
  - {name: bob, env: T_B, owner: bob, team: team-b, scope: write}
monitors:
  - id: nightly-backup
    name: "Nightly backup & \\"restore\\""
    schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
    grace: 15m
    labels: {team: data, severity: critical}
    group: backups
    ping: {tokens: [alice]}
  - id: beat
    schedule: {interval: 1h}
    labels: {team: platform}
    group: heartbeats
  - id: report
    schedule: {interval: 1d}
    labels: {team: data}
    group: reports
"""


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("CRONMON_PING_KEY", KEY)
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)


async def create(client, headers: dict, monitor_id: str, **fields) -> dict:
    auth = {"Authorization": headers["Authorization"]}
    response = await client.post(
        "/api/v1/monitors", json={"id": monitor_id, "schedule": {"interval": "1h"}, **fields}, headers=auth
    )
    assert response.status == 201, await response.text()
    return (await response.json())["monitor"]


async def ping(client, monitor_id: str, suffix: str = "", body: str | None = None) -> None:
    response = await client.post(f"/ping/{KEY}/{monitor_id}{suffix}", data=body or "")
    assert response.status == 200, await response.text()


def rows(page: str) -> list[tuple[str, str]]:
    """(monitor id, status) of each row of the fleet table, in order."""
    return [(m, s) for s, m in re.findall(r'<tr class="st-(\w+)" data-monitor="([^"]+)"', page)]


@pytest.fixture
async def client(aiohttp_client, app_settings, tmp_path, env, clock):
    client = await aiohttp_client(create_app(app_settings(write_config(tmp_path, CONFIG)), clock=clock))
    await wait_for(lambda: client.app[SWEEPER].passes > 0)
    return client


async def test_a_browser_gets_html_everything_else_what_it_got_before(client):
    page = await client.get("/", headers=BROWSER)
    assert page.status == 200 and page.content_type == "text/html"
    assert "Accept" in page.headers["Vary"] and page.headers["Cache-Control"] == "no-store"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script" not in csp  # nothing runs, nothing loads
    text = await page.text()
    assert '<meta http-equiv="refresh" content="10">' in text and "<script" not in text
    plain = await client.get("/")
    assert plain.content_type == "text/plain" and "3 monitors configured" in await plain.text()
    as_json = await client.get("/monitors/beat", headers={"Accept": "application/json, text/html;q=0.5"})
    assert (await as_json.json())["id"] == "beat"
    assert (await client.get("/monitors/beat", headers=BROWSER)).content_type == "text/html"


async def test_refresh_is_configurable_and_bounded(client):
    for asked, meta in (("2", 'content="2"'), ("0", None), ("99999", 'content="3600"'), ("x", 'content="10"')):
        text = await (await client.get(f"/?refresh={asked}", headers=BROWSER)).text()
        if meta is None:
            assert 'http-equiv="refresh"' not in text
        else:
            assert f'http-equiv="refresh" {meta}' in text
    # links and the filter form keep a non-default refresh
    text = await (await client.get("/?refresh=3", headers=BROWSER)).text()
    assert 'href="/monitors/beat?refresh=3"' in text and 'name="refresh" value="3"' in text


async def test_failing_and_missed_first_then_the_rest(client, clock):
    await ping(client, "beat")
    await ping(client, "nightly-backup", "/start")
    clock.advance(5)
    await ping(client, "nightly-backup", "/3", "it broke")
    await ping(client, "report")
    clock.advance(3600 + 301)  # beat: its slot and grace passed
    await client.app[SWEEPER].run_once()
    text = await (await client.get("/", headers=BROWSER)).text()
    assert rows(text) == [("beat", "down"), ("nightly-backup", "failed"), ("report", "up")]
    assert "1h 5m ago" in text  # report's last success, relative
    by_name = await (await client.get("/?sort=name", headers=BROWSER)).text()
    assert [m for m, _ in rows(by_name)] == ["beat", "nightly-backup", "report"]
    backwards = await (await client.get("/?sort=-name", headers=BROWSER)).text()
    assert [m for m, _ in rows(backwards)] == ["report", "nightly-backup", "beat"]
    # counts by status, and the "failing" set
    assert re.search(r'data-status="down"[^>]*><span class="badge">down</span> <b>1</b>', text)
    assert re.search(r"failing</span> <b>2</b>", text)
    failing = await (await client.get("/?status=down&status=failed&status=stuck&status=late", headers=BROWSER)).text()
    assert [m for m, _ in rows(failing)] == ["beat", "nightly-backup"]


async def test_filters_by_status_text_team_and_group(client, clock):
    await ping(client, "nightly-backup", "/1")
    cases = {
        "status=failed": ["nightly-backup"],
        "status=new": ["beat", "report"],
        "status=nonsense": ["beat", "nightly-backup", "report"],  # an unknown status filters nothing
        "q=SEVERITY%3Dcritical": ["nightly-backup"],
        "q=heart": ["beat"],
        "team=data": ["nightly-backup", "report"],
        "group=reports": ["report"],
        "team=data&status=new": ["report"],
        "team=nobody": [],
    }
    for query, expected in cases.items():
        text = await (await client.get(f"/?{query}&sort=name", headers=BROWSER)).text()
        assert [m for m, _ in rows(text)] == expected, query
    text = await (await client.get("/?team=nobody", headers=BROWSER)).text()
    assert "no monitor matches" in text


async def test_everything_from_users_is_escaped(client, clock):
    hostile = "<script>alert(1)</script>"
    await create(client, A, "api-job", name=hostile, labels={"team": '"><img src=x>'}, group="<g>")
    await ping(client, "nightly-backup", "/2", "<b>disk</b> full & </pre><script>x()</script>")
    index = await (await client.get("/", headers=A)).text()
    assert hostile not in index and "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert '"><img' not in index and "&quot;&gt;&lt;img src=x&gt;" in index and "&lt;g&gt;" in index
    assert "Nightly backup &amp; &quot;restore&quot;" in index
    page = await (await client.get("/monitors/nightly-backup", headers=A)).text()
    assert "&lt;b&gt;disk&lt;/b&gt; full &amp; &lt;/pre&gt;&lt;script&gt;x()&lt;/script&gt;" in page
    assert "<script" not in page
    missing = await (await client.get("/monitors/%3Cscript%3E", headers=BROWSER)).text()
    assert "<script>" not in missing and "&lt;script&gt;" in missing


async def test_what_each_viewer_sees(client, clock):
    mine = await create(client, A, "team-a-job", labels={"team": "team-a"})
    await create(client, B, "team-b-job")
    await client.post(mine["ping_url"].replace(client.app[SETTINGS].base_url, "") + "/fail", data="a secret log")
    await ping(client, "nightly-backup", "/1", "backup log text")

    anonymous = await (await client.get("/", headers=BROWSER)).text()
    assert {m for m, _ in rows(anonymous)} == {"nightly-backup", "beat", "report"}  # the YAML monitors
    assert 'action="/login"' in anonymous
    team_a = await (await client.get("/", headers=A)).text()
    assert {m for m, _ in rows(team_a)} == {"nightly-backup", "beat", "report", "team-a-job"}
    assert "token <b>alice</b>" in team_a
    team_b = await (await client.get("/", headers=B)).text()
    assert {m for m, _ in rows(team_b)} == {"nightly-backup", "beat", "report", "team-b-job"}

    # another team's monitor does not exist for you; an anonymous viewer is told to sign in
    assert (await client.get("/monitors/team-b-job", headers=A)).status == 404
    nobody = await client.get("/monitors/team-a-job", headers=BROWSER)
    assert nobody.status == 404 and "sign in" in await nobody.text()

    # logs: only to tokens that can see the monitor
    public = await (await client.get("/monitors/nightly-backup", headers=BROWSER)).text()
    assert "backup log text" not in public and "has a log (sign in to read)" in public
    for headers in (A, A_READ, B):  # a YAML monitor: every token sees it, as /api/v1
        assert "backup log text" in await (await client.get("/monitors/nightly-backup", headers=headers)).text()
    own = await (await client.get("/monitors/team-a-job", headers=A_READ)).text()
    assert "a secret log" in own and "<details" in own

    # ping URLs: to the tokens that may check in (the api's ping_urls rule)
    assert mine["ping_url"] in await (await client.get("/monitors/team-a-job", headers=A)).text()
    assert "/ping/" not in own  # read scope
    yaml_page = await (await client.get("/monitors/nightly-backup", headers=A)).text()
    api_view = await (
        await client.get("/api/v1/monitors/nightly-backup", headers={"Authorization": A["Authorization"]})
    ).json()
    assert api_view["monitor"]["ping_url"] in yaml_page  # named in ping.tokens
    for headers in (B, BROWSER):
        assert "/ping/" not in await (await client.get("/monitors/nightly-backup", headers=headers)).text()
    assert f"/ping/{KEY}" not in yaml_page  # never the ping key

    wrong = await client.get("/", headers={"Authorization": "Bearer nope", **BROWSER})
    assert wrong.status == 401 and "does not know" in await wrong.text()


async def test_sign_in_with_a_form_sets_a_cookie_not_a_url(client):
    form = {"token": TOKENS["T_A"], "next": "/monitors/beat?refresh=0"}
    response = await client.post("/login", data=form, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/monitors/beat?refresh=0"
    cookie = response.cookies["cronmon_token"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert TOKENS["T_A"] not in response.headers["Location"]
    await create(client, A, "team-a-job")
    text = await (await client.get("/", headers=BROWSER)).text()  # the client keeps the cookie
    assert "team-a-job" in text and "Sign out" in text
    out = await client.post("/logout", allow_redirects=False)
    assert out.status == 303
    assert "team-a-job" not in await (await client.get("/", headers=BROWSER)).text()

    bad = await client.post("/login", data={"token": "guess", "next": "/"}, allow_redirects=False)
    assert bad.status == 401 and "cronmon_token" not in bad.cookies
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
        away = await client.post("/login", data={"token": TOKENS["T_B"], "next": target}, allow_redirects=False)
        assert away.status == 303 and away.headers["Location"] == "/", target
    forged = await client.post(
        "/login", data={"token": TOKENS["T_B"]}, headers={"Origin": "https://evil.example"}, allow_redirects=False
    )
    assert forged.status == 403 and "cronmon_token" not in forged.cookies
    for body in (b"\xff\xfe" * 10, b"token=" + b"x" * 10_000, b"%%%&&&==", b""):
        assert (await client.post("/login", data=body, allow_redirects=False)).status in (400, 401, 413)


async def test_a_cookie_of_a_token_no_longer_configured_signs_out(client):
    client.session.cookie_jar.update_cookies({"cronmon_token": "retired-token"})
    response = await client.get("/", headers=BROWSER)
    assert response.status == 200 and "no longer configured" in await response.text()
    assert response.cookies["cronmon_token"].value == ""


async def test_the_store_being_down_is_a_page_not_a_traceback(client, monkeypatch):
    from exporter.errors import StoreUnavailable

    async def unavailable(*args, **kwargs):
        raise StoreUnavailable("redis is unreachable")

    monkeypatch.setattr(client.app[CORE], "snapshot", unavailable)
    monkeypatch.setattr(client.app[CORE], "facts", unavailable)
    for path in ("/", "/monitors/beat"):
        page = await client.get(path, headers=BROWSER)
        assert page.status == 503 and page.content_type == "text/html"
        assert "redis is unreachable" in await page.text()


# -- in a real browser -------------------------------------------------------------

BROWSER_CONFIG = CONFIG + """
  - id: quick
    name: Queue drainer
    schedule: {interval: 2s}
    grace: 1s
    labels: {team: platform}
    group: heartbeats
  - id: invoice-sync
    name: Invoice sync
    schedule: {interval: 3s}
    grace: 1h
    labels: {team: billing}
    group: finance
  - id: db-vacuum
    name: Database vacuum
    schedule: {cron: "30 1 * * *"}
    labels: {team: data}
    group: maintenance
  - id: cert-renew
    name: Certificate renewal
    schedule: {cron: "0 4 * * 1"}
    paused: true
    labels: {team: platform}
    group: maintenance
"""


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is required (Debian package chromium; `python3 dev.py test` installs it)"
    return path


async def test_in_a_browser_a_missed_job_turns_red_at_the_top_filters_logs_and_teams(
    aiohttp_client, app_settings, tmp_path, env
):
    from playwright.async_api import async_playwright, expect

    # The real clock, and a sweeper every 0.3 s: a deadline passes in real time.
    settings = app_settings(write_config(tmp_path, BROWSER_CONFIG), sweep_interval=0.3)
    client = await aiohttp_client(create_app(settings))
    await wait_for(lambda: client.app[SWEEPER].passes > 0)
    base = str(client.make_url("/")).rstrip("/")
    assert urlsplit(base).hostname == "127.0.0.1"

    await ping(client, "nightly-backup", "/start")
    await create(client, A, "team-a-etl", name="Team A ETL", labels={"team": "team-a"}, group="etl")
    await create(client, B, "team-b-secret", name="Team B secret job")
    await asyncio.sleep(1)  # a run that takes a moment
    await ping(client, "nightly-backup", "/2", "pg_dump: error: <connection> refused\nexit status 2")
    for monitor_id in ("beat", "invoice-sync", "report"):
        await ping(client, monitor_id)
    await ping(client, "db-vacuum", "/start")
    await ping(client, "quick")
    pinged = time.time()
    # Recorded missed (down) at its slot + grace + the clock-skew allowance
    # (Monitor.miss_after); late from the slot on.
    deadline = pinged + 2 + client.app[CORE].registry.monitors["quick"].miss_after

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            elsewhere: list[str] = []

            async def loopback_only(route):
                if route.request.url.startswith(base + "/"):
                    await route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    await route.abort()

            await page.route("**/*", loopback_only)
            loads: list[float] = []
            page.on("load", lambda _: loads.append(time.time()))

            # Sign in with the form; the page comes back, refreshing every second.
            await page.goto(base + "/?refresh=1")
            await page.fill('input[name="token"]', TOKENS["T_A"])
            await page.click('form.login button[type="submit"]')
            await expect(page.locator(".who")).to_contain_text("alice")
            table = page.locator("tbody tr")
            await expect(page.locator('tr[data-monitor="team-a-etl"]')).to_be_visible()
            await expect(page.locator('tr[data-monitor="team-b-secret"]')).to_have_count(0)
            assert "Team B secret job" not in await page.content()

            # The missed job: red, at the top, within one refresh of its deadline.
            await expect(table.first).to_have_attribute("data-monitor", "quick", timeout=20_000)
            await expect(table.first).to_have_class("st-down", timeout=20_000)
            seen = time.time()
            assert seen - deadline < 1 + 0.3 + 2.5, (seen - deadline)  # refresh + sweep + slack
            reloads = [t for t in loads if t > pinged]
            assert len(reloads) >= 2, loads  # the meta refresh reloaded it; nothing else did
            badge = table.first.locator(".badge")
            assert await badge.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(198, 40, 40)"
            assert await table.first.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(253, 236, 234)"
            await expect(table.nth(1)).to_have_attribute("data-monitor", "nightly-backup")  # failed, next
            await expect(page.locator(".counts")).to_contain_text("failing 3")

            if os.environ.get("CRONMON_SCREENSHOT_DIR"):
                out = Path(os.environ["CRONMON_SCREENSHOT_DIR"])
                out.mkdir(parents=True, exist_ok=True)
                await page.goto(base + "/")
                await page.screenshot(path=str(out / "status-page.png"), full_page=True)

            # Filters: click a status count, then the team filter of the form.
            await page.goto(base + "/?refresh=0")
            await page.click('.counts a[data-status="failed"]')
            await expect(table).to_have_count(1)
            await expect(table.first).to_have_attribute("data-monitor", "nightly-backup")
            await page.click('a:text("clear")')
            await expect(table).to_have_count(8)
            await page.select_option('select[name="team"]', "platform")
            await page.click('form.filters button[type="submit"]')
            await expect(table).to_have_count(3)
            for i in range(3):
                await expect(table.nth(i).locator("td").nth(5)).to_have_text("platform")
            await page.fill('input[name="q"]', "drainer")
            await page.click('form.filters button[type="submit"]')
            await expect(table).to_have_count(1)
            await expect(table.first).to_have_attribute("data-monitor", "quick")
            assert "refresh" not in urlsplit(page.url).query or "refresh=0" in page.url

            # A log tail opens; the log's markup is text, not markup.
            await page.goto(base + "/?refresh=0")
            await page.click('tr[data-monitor="nightly-backup"] a')
            await expect(page.locator("h2")).to_contain_text('Nightly backup & "restore"')
            log = page.locator("details.log").first
            await expect(log.locator("pre")).not_to_be_visible()
            await log.locator("summary").click()
            await expect(log.locator("pre")).to_be_visible()
            await expect(log.locator("pre")).to_contain_text("pg_dump: error: <connection> refused")
            assert await log.locator("pre b, pre connection").count() == 0
            await expect(page.locator(".ping-url")).to_contain_text(settings.base_url + "/ping/")

            # Another team's monitor is not there, even by its address.
            await page.goto(base + "/monitors/team-b-secret")
            await expect(page.locator("main")).to_contain_text('No monitor "team-b-secret"')

            # Signed out: the YAML monitors only, no logs.
            await page.goto(base + "/?refresh=0")
            await page.click('header button:text("Sign out")')
            await expect(page.locator('form.login input[name="token"]')).to_be_visible()
            await expect(page.locator('tr[data-monitor="team-a-etl"]')).to_have_count(0)
            await expect(table).to_have_count(7)
            await page.goto(base + "/monitors/nightly-backup?refresh=0")
            await expect(page.locator("main")).to_contain_text("has a log (sign in to read)")
            assert elsewhere == []
        finally:
            await browser.close()


async def test_hostile_queries_cookies_and_forms_get_a_page_not_a_5xx(client):
    queries = [
        "refresh=1e400", "refresh=-5", "refresh=%ED%A0%80", "refresh=99999999999999999999999",
        "status=down&status=down&status=x", "sort=-", "sort=--name", "sort=%00", "q=%00%ff%fe",
        "q=" + "a" * 5000, "team=%ED%A0%80&group=%3Cscript%3E", "status=&q=&team=&group=&sort=",
    ]
    cookies = [
        "cronmon_token=%ZZ", "cronmon_token=", 'cronmon_token="', "a=b; cronmon_token=%00", ";;=;",
        "cronmon_token=a; cronmon_token=b",
    ]
    for path in ("/", "/monitors/beat", "/monitors/nope", "/monitors/%ED%A0%80"):
        for query in queries:
            response = await client.get(f"{path}?{query}", headers=BROWSER)
            assert response.status < 500, (path, query)
            assert "<script>" not in await response.text()
        for cookie in cookies:
            response = await client.get(path, headers={**BROWSER, "Cookie": cookie})
            assert response.status < 500, (path, cookie)
    for accept in ("text/html;q=nan", "text/html;q=inf", "text/html;q=", "text/html;;;", ";,;,", "text/html;q=0"):
        assert (await client.get("/", headers={"Accept": accept})).status == 200, accept
    for body, content_type in ((b"token=%ED%A0%80", "application/x-www-form-urlencoded"),
                               (b"--x\r\n\r\n", "multipart/form-data; boundary=x"),
                               (b"&" * 5000, "application/x-www-form-urlencoded"),
                               (b"next=%0d%0aSet-Cookie:x&token=" + TOKENS["T_A"].encode(), None)):
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post("/login", data=body, headers=headers, allow_redirects=False)
        assert response.status < 500, body
        assert "\n" not in response.headers.get("Location", "")
