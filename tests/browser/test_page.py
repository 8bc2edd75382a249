"""The artists' page in headless Chromium against the real service, the Deadline
Cloud simulator and the webhook sink (each its own process)."""
import json
import pathlib
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from stack import FARM, OTHER_TOKEN, QUEUE, TLS, TOKEN, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIGURES = ROOT / "target" / "browser-figures.json"
AXE = pathlib.Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"


def figure(name, value):
    FIGURES.parent.mkdir(exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = value
    FIGURES.write_text(json.dumps(data, indent=2))


def sign_in(w, stack, token=TOKEN, team="lighting"):
    w.page.goto(f"{stack.api}/")
    w.page.get_by_label("Team token").fill(token)
    w.page.get_by_role("button", name="Sign in").click()
    expect(w.page.locator("#team-name")).to_have_text(team)


def subs_table(page):
    return page.get_by_role("table", name="Subscriptions")


def row(page, text):
    return subs_table(page).get_by_role("row").filter(has_text=text)


def monitor_url(key, extra=""):
    return (f"https://abcdef.us-west-2.deadlinecloud.amazonaws.com/us-west-2/farms/{key['farmId']}"
            f"/queues/{key['queueId']}?jobId={key['jobId']}{extra}")


def sent_for(stack, job_id, prefix=""):
    return [r for r in stack.received(prefix) if job_id in json.dumps(r["body"])]


def test_wrong_token_then_right_token_and_reload_keeps_the_session(watched, stack):
    page = watched.page
    page.goto(f"{stack.api}/")
    page.get_by_label("Team token").fill("not-a-token-of-any-team-000")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="Wrong token")).to_be_visible()
    expect(page.get_by_role("table", name="Subscriptions")).to_be_hidden()

    page.get_by_label("Team token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#team-name")).to_have_text("lighting")
    assert page.evaluate("sessionStorage.length") == 1

    page.reload()
    expect(page.locator("#team-name")).to_have_text("lighting")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Team token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_label("Team token")).to_be_visible()
    assert watched.unexpected_console_errors() == []


def test_pasted_monitor_url_subscribes_and_the_row_follows_the_job(watched, stack):
    key = stack.add_job(name="shot_100 lighting pass", taskRunStatus="READY", taskRunStatusCounts={"READY": 8})
    sign_in(watched, stack)
    page = watched.page
    page.get_by_label("Job ID or monitor URL").fill(monitor_url(key, "&stepId=step-1&taskId=task-1-0"))
    started = time.monotonic()
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(row(page, "shot_100 lighting pass")).to_be_visible()
    figure("subscribe_to_named_row_ms", round((time.monotonic() - started) * 1000))
    expect(row(page, "shot_100 lighting pass")).to_contain_text("READY")
    # The pasted URL's farm and queue pre-fill the fields for the next bare job id.
    expect(page.get_by_label("Farm")).to_have_value(key["farmId"])
    expect(page.get_by_label("Queue")).to_have_value(key["queueId"])

    stack.patch_job(key, taskRunStatus="RUNNING", taskRunStatusCounts={"RUNNING": 2, "SUCCEEDED": 2, "READY": 4})
    r = row(page, "shot_100 lighting pass")
    expect(r).to_contain_text("RUNNING", timeout=20_000)
    expect(r.get_by_role("progressbar", name="2 of 8 tasks succeeded")).to_have_js_property("value", 2)
    expect(r).to_contain_text("2/8 succeeded")

    stack.patch_job(key, taskRunStatus="SUCCEEDED", taskRunStatusCounts={"SUCCEEDED": 8})
    expect(r).to_contain_text("SUCCEEDED", timeout=20_000)
    expect(r).to_contain_text("job.succeeded", timeout=20_000)
    expect(r).to_contain_text("delivered", timeout=20_000)
    assert wait_until(lambda: sent_for(stack, key["jobId"], "/webhook"), "the webhook message")
    assert watched.unexpected_console_errors() == []


def test_a_living_slack_message_is_one_message_with_a_link(watched, stack):
    key = stack.add_job(name="shot_150 living", taskRunStatus="READY", taskRunStatusCounts={"READY": 4})
    sign_in(watched, stack, OTHER_TOKEN, "fx")
    page = watched.page
    page.get_by_label("Job ID or monitor URL").fill(monitor_url(key))
    page.get_by_role("button", name="Subscribe", exact=True).click()
    r = row(page, "shot_150 living")
    expect(r).to_be_visible()
    # The first read is a baseline; the next transition posts the job's one message.
    expect(r).to_contain_text("READY")
    stack.patch_job(key, taskRunStatus="SUCCEEDED", taskRunStatusCounts={"SUCCEEDED": 4})
    link = r.get_by_role("link", name="one message in #fx-live")
    expect(link).to_be_visible(timeout=30_000)
    roots = [m for m in stack.slack_messages() if m["thread_ts"] is None and key["jobId"] in json.dumps(m["blocks"])]
    assert len(roots) == 1, roots
    expect(link).to_have_attribute("href", f"https://studio.slack.com/archives/C0SINK0001/p{roots[0]['ts'].replace('.', '')}")
    assert watched.unexpected_console_errors() == []


def test_a_held_digest_shows_its_count_and_send_now_releases_it(watched, stack):
    key = stack.add_job(name="shot_160 digest", taskRunStatus="READY", taskRunStatusCounts={"READY": 4})
    sign_in(watched, stack, OTHER_TOKEN, "fx")
    page = watched.page
    page.get_by_label("Job ID or monitor URL").fill(monitor_url(key))
    page.get_by_role("button", name="Subscribe", exact=True).click()
    r = row(page, "shot_160 digest")
    expect(r).to_contain_text("READY")
    # Other tests' jobs may already be held on this channel: wait for one more.
    _, channels = stack.call("GET", "/v1/channels", token=OTHER_TOKEN)
    before = next(c["held"] for c in channels["channels"] if c["name"] == "fx-digest")
    stack.patch_job(key, taskRunStatus="SUCCEEDED", taskRunStatusCounts={"SUCCEEDED": 4})
    item = page.locator("#channels li").filter(has_text="fx-digest")
    expect(item).to_contain_text(f"{before + 1} held", timeout=30_000)
    expect(item).to_contain_text("next digest")
    item.get_by_role("button", name="Send now").click()

    def digest():
        return [m for m in stack.received("/webhook/fx-digest")
                if m["body"].get("type") == "notifications.digest" and key["jobId"] in json.dumps(m["body"])]

    assert wait_until(digest, "the digest after Send now")
    assert watched.unexpected_console_errors() == []


def test_a_bare_job_id_uses_the_prefilled_farm_and_queue(watched, stack):
    stack.add_job(name="prefill anchor", taskRunStatus="READY")
    anchor = stack.call("GET", "/v1/subscriptions")[1]["subscriptions"]
    latest = max(anchor, key=lambda s: s["createdAt"]) if anchor else None
    key = stack.add_job(name="shot_110 bare id", taskRunStatus="READY",
                        farmId=latest["farmId"] if latest else FARM,
                        queueId=latest["queueId"] if latest else QUEUE)
    sign_in(watched, stack)
    page = watched.page
    if latest:
        expect(page.get_by_label("Farm")).to_have_value(latest["farmId"])
        expect(page.get_by_label("Queue")).to_have_value(latest["queueId"])
    else:
        page.get_by_label("Farm").fill(FARM)
        page.get_by_label("Queue").fill(QUEUE)
    page.get_by_label("Job ID or monitor URL").fill(key["jobId"])
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(row(page, "shot_110 bare id")).to_be_visible()

    # Mistakes are named, in words.
    page.get_by_label("Job ID or monitor URL").fill(
        f"https://abcdef.us-west-2.deadlinecloud.amazonaws.com/us-west-2/farms/{FARM}/queues/{QUEUE}")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(page.get_by_role("alert").filter(has_text="not a job")).to_be_visible()


def test_muted_sends_nothing_and_unsubscribe_removes_the_row(watched, stack):
    muted = stack.add_job(name="shot_200 muted", taskRunStatus="RUNNING", taskRunStatusCounts={"RUNNING": 4})
    control = stack.add_job(name="shot_201 control", taskRunStatus="RUNNING", taskRunStatusCounts={"RUNNING": 4})
    sign_in(watched, stack)
    page = watched.page
    for key in (muted, control):
        page.get_by_label("Job ID or monitor URL").fill(f"{key['farmId']}/{key['queueId']}/{key['jobId']}")
        page.get_by_role("button", name="Subscribe", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text(f"Subscribed to {key['jobId']}")
    expect(row(page, "shot_200 muted")).to_contain_text("RUNNING")
    expect(row(page, "shot_201 control")).to_contain_text("RUNNING")

    mute = row(page, "shot_200 muted").get_by_role("button", name="Mute")
    expect(mute).to_have_attribute("aria-pressed", "false")
    mute.click()
    expect(mute).to_have_attribute("aria-pressed", "true")
    expect(row(page, "shot_200 muted")).to_contain_text("MUTED")

    stack.patch_job(muted, taskRunStatus="SUCCEEDED", taskRunStatusCounts={"SUCCEEDED": 4})
    expect(row(page, "shot_200 muted")).to_contain_text("SUCCEEDED", timeout=20_000)
    # The control job's transition comes after the muted one's; once its message is
    # in, one for the muted job would have been too.
    stack.patch_job(control, taskRunStatus="SUCCEEDED", taskRunStatusCounts={"SUCCEEDED": 4})
    wait_until(lambda: sent_for(stack, control["jobId"], "/webhook"), "the control job's webhook message")
    wait_until(lambda: sent_for(stack, control["jobId"], "/slack"), "the control job's Slack message")
    assert sent_for(stack, muted["jobId"]) == [], "a muted subscription sent a message"
    expect(row(page, "shot_200 muted")).to_contain_text("none yet")

    row(page, "shot_200 muted").get_by_role("button", name="Unsubscribe").click()
    expect(row(page, "shot_200 muted")).to_have_count(0)
    subs = stack.call("GET", "/v1/subscriptions")[1]["subscriptions"]
    assert all(s["jobId"] != muted["jobId"] for s in subs)


def test_send_test_message_reaches_the_sink(watched, stack):
    sign_in(watched, stack)
    page = watched.page
    before = len([r for r in stack.received("/webhook") if r["headers"].get("webhook-id", "").startswith("msg_test_")])
    item = page.locator("#channels li").filter(has_text="pipeline")
    expect(item).to_contain_text("enabled")
    item.get_by_role("button", name="Send test message").click()
    expect(page.get_by_role("status")).to_contain_text("Test message queued for pipeline")
    wait_until(lambda: len([r for r in stack.received("/webhook")
                            if r["headers"].get("webhook-id", "").startswith("msg_test_")]) > before,
               "the test message at the sink")


def test_preview_draws_the_message_and_shows_the_raw_payload(watched, stack):
    sign_in(watched, stack)
    page = watched.page
    page.get_by_label("Channel").select_option("teams-main")
    page.get_by_label("Event").select_option("job.succeeded")
    page.get_by_role("button", name="Show preview").click()
    drawn = page.locator("#preview-drawn .teams-card")
    expect(drawn).to_contain_text("succeeded")
    raw = json.loads(page.locator("#preview-json").text_content())
    assert raw["attachments"][0]["content"]["type"] == "AdaptiveCard"
    _, api_payload = stack.call("GET", "/v1/preview?channel=teams-main&event=job.succeeded")
    assert raw == api_payload, "the page shows the exact payload the API renders"

    page.get_by_label("Channel").select_option("slack-main")
    page.get_by_role("button", name="Show preview").click()
    expect(page.locator("#preview-drawn .slack-msg")).to_be_visible()
    assert "blocks" in json.loads(page.locator("#preview-json").text_content())


def test_a_hostile_job_name_is_text_and_runs_nothing(watched, stack):
    hostile = '<img src=x onerror=alert(1)><script>alert(2)</script>"\'&amp;<b>bold</b>'
    key = stack.add_job(name=hostile, description="<svg onload=alert(3)>", taskRunStatus="READY")
    # Subscribed the way a script would: the page only reads it.
    status, _ = stack.call("POST", "/v1/subscriptions", {**key})
    assert status in (200, 201)
    sign_in(watched, stack)
    page = watched.page
    cell = row(page, "onerror=alert(1)").locator(".job-name")
    # Subscribed behind the page's back: it shows at the next refresh (every 5 s).
    expect(cell).to_have_text(hostile, timeout=20_000)
    assert subs_table(page).locator("img, script, b, svg").count() == 0
    assert watched.dialogs == []
    assert watched.unexpected_console_errors() == []


def test_watches_list_config_ones_read_only_and_add_watch_finds_new_jobs(watched, stack):
    sign_in(watched, stack)
    page = watched.page
    config_watch = page.locator("#watches li").filter(has_text="lighting-queue")
    expect(config_watch).to_contain_text("read-only")
    expect(config_watch.get_by_role("button")).to_have_count(0)

    queue = "queue-" + "e" * 32
    page.get_by_label("Watch name").fill("my-renders")
    page.get_by_label("Monitor URL or IDs to watch").fill(f"{FARM}/{queue}")
    page.get_by_label("only my jobs", exact=True).check()
    page.get_by_label("Created by").fill("jane")
    page.get_by_role("button", name="Add watch").click()
    mine = page.locator("#watches li").filter(has_text="my-renders")
    expect(mine).to_contain_text("added here")
    expect(mine).to_contain_text("only jobs by jane")

    stack.add_job(name="shot_300 by bob", farmId=FARM, queueId=queue, createdBy="bob", taskRunStatus="READY")
    stack.add_job(name="shot_301 by jane", farmId=FARM, queueId=queue, createdBy="jane", taskRunStatus="READY")
    r = row(page, "shot_301 by jane")
    expect(r).to_contain_text("watch my-renders", timeout=30_000)
    expect(row(page, "shot_300 by bob")).to_have_count(0)


def test_a_refresh_keeps_typing_and_focus(watched, stack):
    key = stack.add_job(name="shot_400 focus", taskRunStatus="READY")
    stack.call("POST", "/v1/subscriptions", {**key})
    sign_in(watched, stack)
    page = watched.page
    expect(row(page, "shot_400 focus")).to_be_visible(timeout=20_000)
    field = page.get_by_label("Job ID or monitor URL")
    field.click()
    field.type("job-half-typ")

    for _ in range(2):  # two refreshes go by
        with page.expect_response(lambda r: "/v1/subscriptions?" in r.url and r.request.method == "GET",
                                  timeout=20_000):
            pass
    expect(field).to_have_value("job-half-typ")
    expect(field).to_be_focused()

    mute = row(page, "shot_400 focus").get_by_role("button", name="Mute")
    mute.focus()
    stack.patch_job(key, taskRunStatus="RUNNING", taskRunStatusCounts={"RUNNING": 1})
    expect(row(page, "shot_400 focus")).to_contain_text("RUNNING", timeout=20_000)
    expect(mute).to_be_focused()


def test_security_headers_and_no_inline_code(stack):
    for path, ctype in [("/", "text/html"), ("/assets/app.js", "text/javascript"), ("/assets/app.css", "text/css"),
                        ("/v1/subscriptions", "application/json")]:
        req = urllib.request.Request(f"{stack.api}{path}", headers={"Origin": "https://evil.example"})
        try:
            resp = urllib.request.urlopen(req, timeout=10, context=TLS)
        except urllib.error.HTTPError as e:  # the API without a token: 401, same headers
            resp = e
        h = resp.headers
        assert h["Content-Type"].startswith(ctype), (path, h["Content-Type"])
        csp = h["Content-Security-Policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"):
            assert directive in csp, (path, csp)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "no-referrer"
        assert h["Access-Control-Allow-Origin"] is None, "the API must stay closed to other origins"
    html = urllib.request.urlopen(f"{stack.api}/", timeout=10, context=TLS).read().decode()
    assert " style=" not in html and "<style" not in html
    assert "<script>" not in html and " on" not in html.replace(" only", "")


@pytest.mark.parametrize("watched", [{"width": 390, "height": 844}], indirect=True)
def test_phone_width_and_keyboard_alone(watched, stack):
    page = watched.page
    page.goto(f"{stack.api}/")
    # Keyboard only: the token field has focus on load; Enter signs in.
    expect(page.get_by_label("Team token")).to_be_focused()
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("#team-name")).to_have_text("lighting")
    expect(subs_table(page)).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways at phone width by {overflow}px"
    # Tab reaches the job field and Subscribe.
    page.get_by_label("Job ID or monitor URL").focus()
    page.keyboard.type("job-nonsense")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert").filter(has_text="not a job id")).to_be_visible()


def test_first_load_weight_and_accessibility(browser, stack):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True, ignore_https_errors=True)
    page = ctx.new_page()
    sizes = []
    page.on("requestfinished", lambda r: sizes.append((r.url, r.sizes())))
    page.goto(f"{stack.api}/")
    page.wait_for_load_state("networkidle")
    static = [(u, s) for u, s in sizes if "/v1/" not in u]
    weight = sum(s["responseBodySize"] + s["responseHeadersSize"] for _, s in static)
    figure("first_load_bytes", weight)
    figure("first_load_requests", len(static))

    page.get_by_label("Team token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#team-name")).to_have_text("lighting")
    page.get_by_role("button", name="Show preview").click()
    expect(page.locator("#preview-json")).not_to_be_empty()
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    violations = [{"id": v["id"], "impact": v["impact"], "nodes": len(v["nodes"]),
                   "help": v["help"]} for v in result["violations"]]
    figure("axe_violations", violations)
    figure("axe_passes", len(result.get("passes", [])))
    # With the preview drawn: no violation of any impact.
    assert violations == [], f"accessibility violations: {violations}"
    ctx.close()


@pytest.fixture(scope="module")
def quick_stack():
    """A second service whose finished jobs finish fast: terminal for 1 s."""
    from stack import Stack
    s = Stack(deadline_extra='terminal_grace = "1s"\nfinished_poll_interval = "1s"\n')
    yield s
    s.stop()


def test_finished_tab_show_more_and_search(browser, quick_stack):
    s = quick_stack
    subscribe = lambda k: s.call("POST", "/v1/subscriptions", {x: k[x] for x in ("farmId", "queueId", "jobId")})
    for i in range(60):
        k = s.add_job(name=f"done_{i:03d} comp", taskRunStatus="SUCCEEDED", taskRunStatusCounts={"SUCCEEDED": 4})
        assert subscribe(k)[0] == 201
    active = s.add_job(name="still_running hero", taskRunStatus="RUNNING", taskRunStatusCounts={"RUNNING": 4})
    assert subscribe(active)[0] == 201
    wait_until(lambda: len(s.call("GET", "/v1/subscriptions?state=finished&limit=500")[1]["subscriptions"]) == 60,
               "60 finished subscriptions", timeout=60)

    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, ignore_https_errors=True)
    page = ctx.new_page()
    page.goto(f"{s.api}/")
    page.get_by_label("Team token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(row(page, "still_running hero")).to_be_visible()
    expect(row(page, "done_")).to_have_count(0)
    # Events and channels are summarised, with the lists on demand.
    expect(row(page, "still_running hero")).to_contain_text("events · 3 channels")

    page.get_by_role("tab", name="Finished").click()
    expect(page.get_by_role("tab", name="Finished")).to_have_attribute("aria-selected", "true")
    expect(row(page, "done_")).to_have_count(50)
    expect(row(page, "still_running hero")).to_have_count(0)
    expect(row(page, "done_059 comp")).to_contain_text("FINISHED")
    page.get_by_role("button", name="Show more").click()
    expect(row(page, "done_")).to_have_count(60)
    expect(page.get_by_role("button", name="Show more")).to_be_hidden()

    page.get_by_label("Search jobs by name").fill("done_007")
    expect(row(page, "done_")).to_have_count(1)
    expect(row(page, "done_007 comp")).to_be_visible()
    page.get_by_label("Search jobs by name").fill("")
    expect(row(page, "done_")).to_have_count(50)

    page.get_by_role("tab", name="Active").click()
    expect(row(page, "still_running hero")).to_be_visible()
    # The status badge and its words are separate words to assistive technology.
    status = row(page, "still_running hero").locator("td").nth(1)
    assert "RUNNING " in status.inner_text() or "RUNNING\n" in status.inner_text() or "RUNNING " in status.text_content()
    ctx.close()
