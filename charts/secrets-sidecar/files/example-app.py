# The example workload: read one secret through the sidecar every INTERVAL_SECONDS and log what
# came back (version, cache state), never the value. The token is read on every request: the
# sidecar may rotate it.
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

url = os.environ["SECRETS_SIDECAR_URL"] + "/secrets/" + os.environ["SECRET_PATH"]
token_file = os.environ["SECRETS_SIDECAR_TOKEN_FILE"]
interval = float(os.environ.get("INTERVAL_SECONDS", "30"))
# As PID 1 the process would ignore SIGTERM: stop at once instead of holding the pod (and the
# native sidecar's own shutdown, which starts only after the app has stopped) for its grace.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    try:
        with open(token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
        request = urllib.request.Request(url, headers={"X-Sidecar-Token": token})
        with urllib.request.urlopen(request, timeout=10) as reply:
            envelope = json.load(reply)
            print(
                "read", os.environ["SECRET_PATH"],
                "status", reply.status,
                "version", envelope["version"],
                "cache", reply.headers.get("X-Sidecar-Cache"),
                "stale", envelope["stale"],
                flush=True,
            )
    except urllib.error.HTTPError as exc:
        print("refused", os.environ["SECRET_PATH"], "status", exc.code, exc.read()[:300], flush=True)
    except OSError as exc:
        print("cannot reach the sidecar:", exc, flush=True)
    time.sleep(interval)
