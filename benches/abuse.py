"""The abuse run of scripts/bench-abuse.sh: a normal client's search latency, idle and while 8
abusive clients send the requests of findings 4-6 (each probe at most 200 requests).
Prints one JSON line: p50/p99 (ms) of both phases, their ratio, and what the abusers got."""
import json
import sys
import threading
import time
import urllib.error
import urllib.request

BASE, NAME = sys.argv[1], sys.argv[2]
NORMAL_SEARCHES = 200
ABUSERS = 8
PROBE_LIMIT = 200


def post(path, body, timeout=120.0):
    data = json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code
    except Exception:
        return 0


NORMAL = ["laser printer", "usb cable", "hp toner black", "network switch 24 port",
          "wireless mouse", "ink cartridge cyan", "notebook bag", "hdmi adapter"]


def normal_latencies():
    out = []
    for i in range(NORMAL_SEARCHES):
        started = time.perf_counter()
        status = post("/v1/collections/shop/search", {"query": NORMAL[i % len(NORMAL)], "k": 10})
        out.append((time.perf_counter() - started) * 1e3)
        assert status == 200, f"normal search answered {status}"
    return out


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


LONG_TEXT = " ".join(f"word{i}" for i in range(240))
ABUSE = [
    ("spaces", "/v1/collections/shop/evaluate",
     {"queries": [{"id": "q", "text": "laser printer"}],
      "qrels": [{"query_id": "q", "doc_id": "1423", "score": 1}],
      "spaces": ["base", "tuned"] * 200}),
    ("auto1mb", "/v1/collections/shop/search",
     {"query": "printer " * 131072, "k": 10, "space": "auto", "user": "abuser"}),
    ("query7mb", "/v1/collections/shop/search", {"query": "toner " * 1200000, "k": 10}),
    ("embed64", "/v1/embeddings", {"model": "base", "input": [LONG_TEXT] * 64}),
]
BODIES = [(kind, path, json.dumps(body).encode()) for kind, path, body in ABUSE]


def abuser(index, stop, tally):
    sent = 0
    while not stop.is_set() and sent < PROBE_LIMIT:
        kind, path, data = BODIES[(index + sent) % len(BODIES)]
        request = urllib.request.Request(BASE + path, data=data, method="POST",
                                         headers={"content-type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            e.read()
            status = e.code
        except Exception:
            status = 0
        seconds = time.perf_counter() - started
        with tally["lock"]:
            entry = tally.setdefault(kind, {"requests": 0, "statuses": {}, "seconds": 0.0})
            entry["requests"] += 1
            entry["statuses"][str(status)] = entry["statuses"].get(str(status), 0) + 1
            entry["seconds"] += seconds
        sent += 1


def main():
    for _ in range(20):  # warm up
        post("/v1/collections/shop/search", {"query": "warm up", "k": 10})
    idle = normal_latencies()
    stop = threading.Event()
    tally = {"lock": threading.Lock()}
    threads = [threading.Thread(target=abuser, args=(i, stop, tally)) for i in range(ABUSERS)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # let the abuse reach the server
    loaded = normal_latencies()
    stop.set()
    for t in threads:
        t.join()
    del tally["lock"]
    result = {
        "binary": NAME,
        "idle_p50_ms": round(percentile(idle, 50), 2),
        "idle_p99_ms": round(percentile(idle, 99), 2),
        "abuse_p50_ms": round(percentile(loaded, 50), 2),
        "abuse_p99_ms": round(percentile(loaded, 99), 2),
        "p99_ratio": round(percentile(loaded, 99) / percentile(idle, 99), 2),
        "abusive_requests": {k: {"requests": v["requests"], "statuses": v["statuses"],
                                 "mean_s": round(v["seconds"] / max(1, v["requests"]), 3)}
                             for k, v in tally.items()},
    }
    print(json.dumps(result))


main()
