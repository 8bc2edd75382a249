#!/usr/bin/env python3
"""Renders the default messages (the golden files in tests/golden/) as Slack-like,
Teams-like and webhook previews, and screenshots them with headless Chromium into
docs/previews/. Run by hand after changing a default template:

    UPDATE_GOLDEN=1 cargo test --test it golden && python3 scripts/render-previews.py

Needs Debian's chromium and Playwright for Python (what scripts/test installs). The previews imitate each
client's layout closely enough to judge a template; they are not the clients.
"""
import html
import os
import json
import pathlib
import re
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
OUT = ROOT / "docs" / "previews"
EVENTS = ["job.succeeded", "job.failed", "job.progress", "job.stalled", "job.create_failed"]

CSS = """
body { font-family: 'DejaVu Sans', Lato, Arial, sans-serif; margin: 0; padding: 16px; width: 640px; }
h1 { font-size: 15px; color: #555; margin: 0 0 12px; font-weight: normal; }
.slack { background: #fff; }
.msg { display: flex; padding: 8px 0; border-bottom: 1px solid #eee; }
.avatar { width: 36px; height: 36px; border-radius: 6px; background: #4a154b; color: #fff;
          font-weight: bold; display: flex; align-items: center; justify-content: center; margin-right: 10px; flex: none; }
.who { font-weight: bold; font-size: 15px; } .app { background:#eee; color:#666; font-size:10px; padding:1px 3px; border-radius:2px; }
.header { font-size: 18px; font-weight: 900; margin: 4px 0; color: #1d1c1d; }
.mrkdwn { font-size: 15px; line-height: 1.45; color: #1d1c1d; white-space: pre-wrap; }
.mrkdwn code { color: #e01e5a; background: #f6f6f6; border: 1px solid #ddd; border-radius: 3px; font-size: 12px; padding: 0 2px; }
.button { display: inline-block; border: 1px solid #bbb; border-radius: 4px; padding: 3px 10px; font-size: 13px;
          font-weight: bold; margin-top: 6px; color: #1d1c1d; }
.teams { background: #f5f5f5; }
.card { background: #fff; border-radius: 4px; box-shadow: 0 1px 2px rgba(0,0,0,.2); padding: 12px 16px; margin-bottom: 12px;
        font-family: 'Segoe UI', 'DejaVu Sans', sans-serif; }
.card .rt { font-size: 14px; margin: 2px 0; color: #242424; white-space: pre-wrap; }
.card .medium { font-size: 17px; } .card .bolder { font-weight: 600; }
.card .action { margin-top: 10px; border: 1px solid #5b5fc7; color: #5b5fc7; text-align: center; padding: 5px; border-radius: 4px; font-size: 14px; }
.card .mono { font-family: 'DejaVu Sans Mono', monospace; font-size: 12px; }
pre.code { background: #f8f8f8; color: #1d1c1d; border: 1px solid #ddd; font-size: 12px; }
pre { background: #1e1e1e; color: #d4d4d4; padding: 10px; border-radius: 4px; font-size: 11px; white-space: pre-wrap; word-break: break-all; }
"""


def mrkdwn(text: str) -> str:
    """Slack mrkdwn → HTML, for what the default templates use. The text is already
    escaped for Slack (&amp; &lt; &gt;), which is also HTML escaping."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w_])_([^_\n]+)_(?![\w_])", r"<i>\1</i>", text)
    return text


def slack(msg: dict) -> str:
    parts = []
    for b in msg.get("blocks", []):
        if b["type"] == "header":
            parts.append(f'<div class="header">{html.escape(b["text"]["text"])}</div>')
        elif b["type"] == "section":
            parts.append(f'<div class="mrkdwn">{mrkdwn(b["text"]["text"])}</div>')
        elif b["type"] == "context":
            for e in b["elements"]:
                parts.append(f'<div class="mrkdwn" style="font-size:12px;color:#616061">{mrkdwn(e["text"])}</div>')
        elif b["type"] == "rich_text":
            for part in b["elements"]:
                text = "".join(e.get("text", "") for e in part.get("elements", []))
                if part["type"] == "rich_text_preformatted":
                    parts.append(f'<pre class="code">{html.escape(text)}</pre>')
                else:
                    parts.append(f'<div class="mrkdwn"><b>{html.escape(text)}</b></div>')
        elif b["type"] == "actions":
            for e in b["elements"]:
                parts.append(f'<span class="button">{html.escape(e["text"]["text"])}</span>')
    return ('<div class="msg"><div class="avatar">DN</div><div><span class="who">deadline-notifier</span> '
            '<span class="app">APP</span>' + "".join(parts) + "</div></div>")


def teams(msg: dict) -> str:
    card = msg["attachments"][0]["content"]
    parts = []
    for b in card["body"]:
        runs = []
        for r in b.get("inlines", []):
            cls = "medium" if r.get("size") == "Medium" else ""
            cls += " bolder" if r.get("weight") == "Bolder" else ""
            cls += " mono" if r.get("fontType") == "Monospace" else ""
            runs.append(f'<span class="{cls}">{html.escape(r["text"])}</span>')
        parts.append(f'<div class="rt">{"".join(runs)}</div>')
    for a in card.get("actions", []):
        parts.append(f'<div class="action">{html.escape(a["title"])}</div>')
    return f'<div class="card">{"".join(parts)}</div>'


def webhook(msg: dict) -> str:
    return f"<pre>{html.escape(json.dumps(msg, indent=2, ensure_ascii=False))}</pre>"


def page(kind: str, body: str) -> str:
    title = {"slack": "Slack (Block Kit)", "teams": "Microsoft Teams (Adaptive Card 1.5)",
             "webhook": "Generic webhook (Standard Webhooks JSON)"}[kind]
    return (f'<!doctype html><meta charset="utf-8"><style>{CSS}</style>'
            f'<body class="{kind}"><h1>{title} — default template, sample job</h1>{body}</body>')


def main() -> None:
    from playwright.sync_api import sync_playwright  # installed by scripts/test

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page_ = browser.new_page(viewport={"width": 672, "height": 800})
        for kind, fn, events in [("slack", slack, EVENTS), ("teams", teams, EVENTS),
                                 ("webhook", webhook, ["job.failed"])]:
            if kind == "webhook" and os.environ.get("WEBHOOK_PREVIEW") != "1":
                continue  # the raw JSON is in tests/golden/webhook/; WEBHOOK_PREVIEW=1 draws it
            body = "".join(fn(json.loads((GOLDEN / kind / f"{e}.json").read_text())) for e in events)
            page_.set_content(page(kind, body))
            out = OUT / f"{kind}.jpg"
            page_.screenshot(path=out, full_page=True, type="jpeg", quality=50)
            print(f"wrote {out.relative_to(ROOT)}")
        browser.close()


if __name__ == "__main__":
    main()
