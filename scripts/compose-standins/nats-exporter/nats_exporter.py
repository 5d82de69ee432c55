"""A stand-in for natsio/prometheus-nats-exporter, for scripts/test-compose (no registry here
ships it). It takes the real exporter's command line (`-varz -connz -jsz=all [-p PORT] URL`),
reads NATS's monitoring endpoints at every scrape, and serves GET /metrics on 7777 with a subset
of the real metrics, under the real names and label names:

- -varz: gnatsd_varz_connections, gnatsd_varz_in_msgs, gnatsd_varz_out_msgs, gnatsd_varz_mem;
- -connz: gnatsd_connz_num_connections;
- -jsz=all: jetstream_stream_total_messages, jetstream_stream_total_bytes,
  jetstream_consumer_num_pending, jetstream_consumer_num_ack_pending,
  jetstream_consumer_num_redelivered (labels server_id, account, stream_name, consumer_name).

Every other metric and flag of the real exporter is left out.
"""

import json
import sys
import urllib.request
from http.server import ThreadingHTTPServer

from standin import Handler, exit_on_sigterm

args = sys.argv[1:]
port = 7777
if "-p" in args:
    port = int(args[args.index("-p") + 1])
URL = args[-1].rstrip("/")
VARZ, CONNZ, JSZ = "-varz" in args, "-connz" in args, any(a.startswith("-jsz") for a in args)


def get(path):
    with urllib.request.urlopen(f"{URL}{path}", timeout=5) as response:
        return json.load(response)


def labels(**kv):
    return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}"


def metrics():
    lines = []

    def gauge(name, value, **kv):
        lines.append(f"{name}{labels(**kv) if kv else ''} {value}")

    if VARZ:
        v = get("/varz")
        for field in ("connections", "in_msgs", "out_msgs", "mem"):
            gauge(f"gnatsd_varz_{field}", v.get(field, 0), server_id=v["server_id"])
    if CONNZ:
        c = get("/connz")
        gauge("gnatsd_connz_num_connections", c.get("num_connections", 0), server_id=c["server_id"])
    if JSZ:
        j = get("/jsz?accounts=true&streams=true&consumers=true")
        for account in j.get("account_details", []):
            for stream in account.get("stream_detail", []):
                base = {"server_id": j["server_id"], "account": account["name"], "stream_name": stream["name"]}
                gauge("jetstream_stream_total_messages", stream["state"]["messages"], **base)
                gauge("jetstream_stream_total_bytes", stream["state"]["bytes"], **base)
                for consumer in stream.get("consumer_detail", []):
                    for field in ("num_pending", "num_ack_pending", "num_redelivered"):
                        gauge(f"jetstream_consumer_{field}", consumer.get(field, 0),
                              consumer_name=consumer["name"], **base)
    return "\n".join(lines) + "\n"


class Exporter(Handler):
    def do_GET(self):
        if self.path != "/metrics":
            return self.reply(404, b"only /metrics\n", "text/plain")
        try:
            self.reply(200, metrics().encode(), "text/plain; version=0.0.4")
        except (OSError, ValueError, KeyError) as e:
            self.reply(500, f"reading {URL}: {e}\n".encode(), "text/plain")


def main():
    exit_on_sigterm()
    print(f"nats-exporter stand-in: {URL} -> :{port}/metrics", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Exporter).serve_forever()


if __name__ == "__main__":
    main()
