"""The real service, the Deadline Cloud simulator and the webhook sink, each its own
process from the project's binary, for browser tests and the screenshot script."""
import json
import os
import ssl
import pathlib
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("DEADLINE_NOTIFIER_BIN", ROOT / "target" / "debug" / "deadline-notifier"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# What the machine's closed network needs: no background calls to Google's hosts.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions"]

# The page is served over HTTPS with a test certificate (tests/tls), as a studio
# would serve it; scripts trust that certificate, Chromium is told to accept it.
CERT = ROOT / "tests" / "tls" / "a.pem"
KEY = ROOT / "tests" / "tls" / "a.key"
TLS = ssl.create_default_context(cafile=str(CERT))

TOKEN = "browser-lighting-token-0123456789"
OTHER_TOKEN = "browser-fx-token-0123456789abc"
FARM = "farm-" + "b" * 32
QUEUE = "queue-" + "c" * 32


def wait_until(check, what, timeout=30.0):
    """Polls `check` until it returns something truthy; fails with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def http(method, url, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        context = TLS if url.startswith("https:") else None
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, (json.loads(text) if text.startswith("{") else text)
    except (urllib.error.URLError, ConnectionError):
        return None, None


CONFIG = """
[server]
listen = "127.0.0.1:0"
rate_limit = 0
tls = {{ cert = "{cert}", key = "{key}" }}
[store]
path = "{store}"
[deadline]
region = "us-west-2"
poll_interval = "300ms"
discovery_interval = "1s"
monitor_url = "https://monitor.example.com"
[delivery]
allow_private_targets = true
retry_schedule = ["1s"]
slack_interval = "50ms"
teams_interval = "50ms"
[[teams]]
name = "lighting"
tokens = ["{token}"]
[[teams.channels]]
name = "slack-main"
kind = "slack"
url = "http://127.0.0.1:{sink_port}/slack/T000/B000/browser"
[[teams.channels]]
name = "teams-main"
kind = "teams"
url = "http://127.0.0.1:{sink_port}/teams/workflows/browser"
[[teams.channels]]
name = "pipeline"
kind = "webhook"
url = "http://127.0.0.1:{sink_port}/webhook"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
[[teams.watches]]
name = "lighting-queue"
farm_id = "{farm}"
queue_ids = ["queue-{dddd}"]
[[teams]]
name = "fx"
tokens = ["{other}"]
[[teams.channels]]
name = "fx-slack"
kind = "slack"
url = "http://127.0.0.1:{sink_port}/slack/T000/B000/fx"
[[teams.channels]]
name = "fx-digest"
kind = "webhook"
url = "http://127.0.0.1:{sink_port}/webhook/fx-digest"
digest = "1h"
[[teams.channels]]
name = "fx-live"
kind = "slack_app"
token = "xoxb-sink-token"
channel = "C0SINK0001"
api_url = "http://127.0.0.1:{sink_port}/api/"
"""


class Stack:
    def __init__(self, deadline_extra=""):
        if not BIN.exists():
            subprocess.run(["cargo", "build", "--locked", "--bin", "deadline-notifier"], cwd=ROOT, check=True)
        self.dir = tempfile.TemporaryDirectory()
        tmp = pathlib.Path(self.dir.name)
        self.procs = []
        # Each process binds port 0 and says where it listens; nothing picks a port
        # for another process to take later.
        self._start("simulator", ["simulate", "--listen", "127.0.0.1:0"], tmp)
        self._start("sink", ["sink", "--listen", "127.0.0.1:0"], tmp)
        self.sim = "http://" + self.address("simulator", r"simulator on http://(127\.0\.0\.1:\d+)")
        self.sink = "http://" + self.address("sink", r"sink on http://(127\.0\.0\.1:\d+)")
        sink_port = self.sink.rsplit(":", 1)[1]
        wait_until(lambda: http("GET", f"{self.sim}/_sim/stats")[0] == 200, "the simulator")
        wait_until(lambda: http("GET", f"{self.sink}/_sink/received")[0] == 200, "the sink")
        config = tmp / "notifier.toml"
        config.write_text(CONFIG.format(sink_port=sink_port, store=tmp / "store.sled",
                                        token=TOKEN, other=OTHER_TOKEN, farm=FARM, dddd="d" * 32,
                                        cert=CERT, key=KEY).replace("[deadline]\n", "[deadline]\n" + deadline_extra, 1))
        env = dict(os.environ, AWS_ENDPOINT_URL_DEADLINE=self.sim, AWS_ACCESS_KEY_ID="AKIDBROWSER",
                   AWS_SECRET_ACCESS_KEY="browser", AWS_REGION="us-west-2", AWS_EC2_METADATA_DISABLED="true")
        self._start("service", ["serve", "--config", str(config)], tmp, env)
        self.api = "https://" + self.address("service", r"started.*?addr=(127\.0\.0\.1:\d+)", timeout=60)
        wait_until(lambda: http("GET", f"{self.api}/healthz")[0] == 200, "the service", timeout=60)

    def _start(self, name, args, tmp, env=None):
        log = open(tmp / f"{name}.log", "wb")
        p = subprocess.Popen([str(BIN), *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append((name, p))

    def address(self, name, pattern, timeout=30):
        """The address a process logged that it listens on."""
        rx = re.compile(pattern)

        def found():
            m = rx.search(ANSI.sub("", self.log(name)))
            return m and m.group(1)

        return wait_until(found, f"{name} to say where it listens", timeout=timeout)

    def log(self, name):
        return (pathlib.Path(self.dir.name) / f"{name}.log").read_text(errors="replace")

    def stop(self):
        for _, p in reversed(self.procs):
            p.terminate()
        for _, p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.dir.cleanup()

    # --- the simulator ---
    def add_job(self, **spec):
        spec.setdefault("farmId", FARM)
        spec.setdefault("queueId", QUEUE)
        status, key = http("POST", f"{self.sim}/_sim/jobs", spec)
        assert status == 201, (status, key)
        return key

    def patch_job(self, key, **patch):
        url = f"{self.sim}/_sim/jobs/{key['farmId']}/{key['queueId']}/{key['jobId']}"
        status, body = http("PATCH", url, patch)
        assert status == 204, (status, body)

    # --- the sink ---
    def received(self, path_prefix=""):
        _, body = http("GET", f"{self.sink}/_sink/received")
        return [r for r in body["received"] if r["path"].startswith(path_prefix)]

    # --- the API, as a script would use it ---
    def slack_messages(self):
        """What the sink's fake Slack workspace holds."""
        _, body = http("GET", f"{self.sink}/_fake/messages")
        return body["messages"]

    def call(self, method, path, body=None, token=TOKEN):
        return http(method, f"{self.api}{path}", body, token)
