#!/usr/bin/env python3
"""Screenshots of the artists' page at desktop and phone width, into docs/. Starts
the real service, simulator and sink (tests/browser/stack.py), gives the team a few
jobs in different states, and drives headless Chromium. Run by hand after changing
the page (needs what scripts/test installs):

    cargo build && python3 scripts/screenshots.py
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "browser"))
from playwright.sync_api import expect, sync_playwright  # noqa: E402
from stack import CHROMIUM, CHROMIUM_ARGS, TOKEN, Stack  # noqa: E402

DOCS = ROOT / "docs"


def main():
    s = Stack()
    try:
        jobs = [
            dict(name="shot_010 comp v3", taskRunStatus="SUCCEEDED", taskRunStatusCounts={"SUCCEEDED": 600}),
            dict(name="shot_020 lighting", taskRunStatus="RUNNING",
                 taskRunStatusCounts={"SUCCEEDED": 310, "RUNNING": 12, "READY": 278}),
            dict(name="shot_030 fx cache", taskRunStatus="FAILED", taskRunStatusCounts={"SUCCEEDED": 37, "FAILED": 3}),
            dict(name="shot_040 crowd sim", taskRunStatus="READY", taskRunStatusCounts={"READY": 240}),
        ]
        keys = []
        for j in jobs:
            start = dict(j, taskRunStatus="RUNNING", taskRunStatusCounts={"RUNNING": 1})
            key = s.add_job(**start)
            status, sub = s.call("POST", "/v1/subscriptions", {**key})
            assert status == 201, sub
            keys.append((key, j, sub))
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{s.api}/")
            page.get_by_label("Team token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            table = page.get_by_role("table", name="Subscriptions")
            for key, j, _ in keys:
                expect(table).to_contain_text(j["name"])
                s.patch_job(key, taskRunStatus=j["taskRunStatus"], taskRunStatusCounts=j["taskRunStatusCounts"])
            for _, j, _ in keys:
                expect(table.get_by_role("row").filter(has_text=j["name"])).to_contain_text(
                    j["taskRunStatus"], timeout=20_000)
            expect(table).to_contain_text("delivered", timeout=20_000)
            s.call("PATCH", f"/v1/subscriptions/{keys[3][2]['id']}", {"muted": True})
            page.get_by_role("button", name="Show preview").click()
            expect(page.locator("#preview-drawn")).not_to_be_empty()
            page.get_by_label("Job ID or monitor URL").fill(
                "https://abcdef.us-west-2.deadlinecloud.amazonaws.com/us-west-2/farms/farm-…")
            with page.expect_response(lambda r: r.url.endswith("/v1/subscriptions"), timeout=20_000):
                pass
            page.mouse.move(0, 0)
            DOCS.mkdir(exist_ok=True)
            page.screenshot(path=DOCS / "page-desktop.jpg", clip={"x": 0, "y": 0, "width": 1280, "height": 1540},
                            full_page=True, type="jpeg", quality=60)
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=DOCS / "page-phone.jpg", clip={"x": 0, "y": 0, "width": 390, "height": 1800},
                            full_page=True, type="jpeg", quality=60)
            b.close()
        for f in ("page-desktop.jpg", "page-phone.jpg"):
            print(f"wrote docs/{f}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
