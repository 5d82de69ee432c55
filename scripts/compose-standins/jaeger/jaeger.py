"""A stand-in for Jaeger v2's all-in-one image, for scripts/test-compose (no registry here ships
Jaeger). It keeps, in memory, the spans the services send, and answers the part of Jaeger's
query API that a person or the test reads:

- OTLP/HTTP receiver on 4318: POST /v1/traces, protobuf (decoded here with a small reader of
  the protobuf wire format: no library needed) or JSON;
- query API on 16686: GET /api/services, GET /api/traces/{trace_id}, GET /api/traces?service=X,
  in the JSON shape Jaeger's UI uses; GET / answers a one-line page instead of the UI;
- health on 13133: GET /status, as Jaeger v2's healthcheckv2 extension.

Not served: OTLP over gRPC (4317), the UI, sampling, storage other than memory. At most
MAX_SPANS spans are kept; the oldest traces are dropped first.
"""

import gzip
import json
import struct
import threading
from collections import OrderedDict
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from standin import Handler, exit_on_sigterm

MAX_SPANS = 500_000
KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}

lock = threading.Lock()
traces = OrderedDict()  # trace id (hex) -> list of spans, as dicts
span_count = 0


# --- protobuf wire format ------------------------------------------------------------------

def varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(data):
    """Yields (field number, value) of one message; length-delimited values as bytes."""
    i = 0
    while i < len(data):
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(data, i)
        elif wire == 1:
            value, i = struct.unpack_from("<Q", data, i)[0], i + 8
        elif wire == 2:
            length, i = varint(data, i)
            value, i = bytes(data[i:i + length]), i + length
        elif wire == 5:
            value, i = struct.unpack_from("<I", data, i)[0], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def any_value(data):
    for number, value in fields(data):
        if number == 1:
            return value.decode()
        if number == 2:
            return bool(value)
        if number == 3:
            return value - (1 << 64) if value >= 1 << 63 else value
        if number == 4:
            return struct.unpack("<d", struct.pack("<Q", value))[0]
        return repr(value)
    return None


def attributes(items):
    out = {}
    for item in items:
        key = value = None
        for number, v in fields(item):
            if number == 1:
                key = v.decode()
            elif number == 2:
                value = any_value(v)
        out[key] = value
    return out


def spans_from_protobuf(body):
    """ExportTraceServiceRequest -> [(service name, span dict)]."""
    out = []
    for number, resource_spans in fields(body):
        if number != 1:
            continue
        resource, scope_spans = {}, []
        for n, v in fields(resource_spans):
            if n == 1:
                resource = attributes([a for k, a in fields(v) if k == 1])
            elif n == 2:
                scope_spans.append(v)
        service = resource.get("service.name", "unknown_service")
        for scope in scope_spans:
            for n, raw in fields(scope):
                if n == 2:
                    out.append((service, span_from_protobuf(raw)))
    return out


def span_from_protobuf(raw):
    span = {"parent": "", "attributes": {}, "links": [], "status": 0, "kind": 0}
    attrs = []
    for n, v in fields(raw):
        if n == 1:
            span["trace_id"] = v.hex()
        elif n == 2:
            span["span_id"] = v.hex()
        elif n == 4:
            span["parent"] = v.hex()
        elif n == 5:
            span["name"] = v.decode()
        elif n == 6:
            span["kind"] = v
        elif n == 7:
            span["start"] = v
        elif n == 8:
            span["end"] = v
        elif n == 9:
            attrs.append(v)
        elif n == 13:
            link = dict(fields(v))
            span["links"].append({"trace_id": link.get(1, b"").hex(), "span_id": link.get(2, b"").hex()})
        elif n == 15:
            span["status"] = dict(fields(v)).get(3, 0)
    span["attributes"] = attributes(attrs)
    return span


def spans_from_json(body):
    """The same request in OTLP/JSON (ids are hex strings there)."""
    def value(v):
        for key in ("stringValue", "boolValue", "intValue", "doubleValue"):
            if key in v:
                return v[key]
        return None

    out = []
    for rs in json.loads(body).get("resourceSpans", []):
        resource = {a["key"]: value(a["value"]) for a in rs.get("resource", {}).get("attributes", [])}
        service = resource.get("service.name", "unknown_service")
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                out.append((service, {
                    "trace_id": s["traceId"].lower(), "span_id": s["spanId"].lower(),
                    "parent": s.get("parentSpanId", "").lower(), "name": s.get("name", ""),
                    "kind": s.get("kind", 0), "start": int(s.get("startTimeUnixNano", 0)),
                    "end": int(s.get("endTimeUnixNano", 0)),
                    "attributes": {a["key"]: value(a["value"]) for a in s.get("attributes", [])},
                    "links": [{"trace_id": l["traceId"].lower(), "span_id": l["spanId"].lower()}
                              for l in s.get("links", [])],
                    "status": s.get("status", {}).get("code", 0),
                }))
    return out


def store(spans):
    global span_count
    with lock:
        for service, span in spans:
            span["service"] = service
            traces.setdefault(span["trace_id"], []).append(span)
            span_count += 1
        while span_count > MAX_SPANS and traces:
            _, dropped = traces.popitem(last=False)
            span_count -= len(dropped)


# --- Jaeger's query API, JSON shape of its UI ---------------------------------------------

def jaeger_trace(trace_id, spans):
    processes, out = {}, []
    for span in spans:
        pid = next((p for p, v in processes.items() if v["serviceName"] == span["service"]), None)
        if pid is None:
            pid = f"p{len(processes) + 1}"
            processes[pid] = {"serviceName": span["service"], "tags": []}
        tags = [{"key": k, "type": "string", "value": v} for k, v in span["attributes"].items()]
        tags.append({"key": "span.kind", "type": "string", "value": KINDS.get(span["kind"], "unspecified")})
        if span["status"] == 2:
            tags.append({"key": "error", "type": "bool", "value": True})
        refs = [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": span["parent"]}] if span["parent"] else []
        refs += [{"refType": "FOLLOWS_FROM", "traceID": l["trace_id"], "spanID": l["span_id"]} for l in span["links"]]
        start = span.get("start", 0)
        out.append({
            "traceID": trace_id, "spanID": span["span_id"], "operationName": span.get("name", ""),
            "references": refs, "startTime": start // 1000,
            "duration": max(0, span.get("end", start) - start) // 1000,
            "tags": tags, "logs": [], "processID": pid, "warnings": None,
        })
    return {"traceID": trace_id, "spans": out, "processes": processes, "warnings": None}


class Otlp(Handler):
    def do_POST(self):
        if urlparse(self.path).path != "/v1/traces":
            return self.reply(404, {"error": "only /v1/traces"})
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            if self.headers.get("Content-Type", "").startswith("application/json"):
                store(spans_from_json(body))
                return self.reply(200, {})
            store(spans_from_protobuf(body))
        except (ValueError, KeyError, IndexError, struct.error) as e:
            return self.reply(400, {"error": f"cannot decode: {e}"})
        # An empty ExportTraceServiceResponse.
        self.reply(200, b"", "application/x-protobuf")


class Query(Handler):
    def do_GET(self):
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        with lock:
            if url.path == "/":
                return self.reply(200, b"Jaeger stand-in (scripts/compose-standins/jaeger): the UI is not served here; "
                                       b"the query API is, under /api.\n", "text/plain")
            if parts == ["api", "services"]:
                names = sorted({s["service"] for spans in traces.values() for s in spans})
                return self.reply(200, {"data": names, "total": len(names), "limit": 0, "offset": 0, "errors": None})
            if parts[:2] == ["api", "traces"] and len(parts) == 3:
                trace_id = parts[2].lower().rjust(32, "0")
                if trace_id not in traces:
                    return self.reply(404, {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]})
                return self.reply(200, {"data": [jaeger_trace(trace_id, traces[trace_id])], "errors": None})
            if parts == ["api", "traces"]:
                query = parse_qs(url.query)
                service = query.get("service", [None])[0]
                limit = int(query.get("limit", ["20"])[0])
                found = [jaeger_trace(t, spans) for t, spans in reversed(traces.items())
                         if service is None or any(s["service"] == service for s in spans)][:limit]
                return self.reply(200, {"data": found, "total": len(found), "limit": limit, "offset": 0, "errors": None})
        self.reply(404, {"data": None, "errors": [{"code": 404, "msg": "not served by the stand-in"}]})


class Health(Handler):
    def do_GET(self):
        if urlparse(self.path).path == "/status":
            return self.reply(200, {"status": "StatusOK", "healthy": True})
        self.reply(404, {"error": "only /status"})


def main():
    exit_on_sigterm()
    servers = [ThreadingHTTPServer(("0.0.0.0", port), handler)
               for port, handler in ((4318, Otlp), (16686, Query), (13133, Health))]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("jaeger stand-in: OTLP/HTTP on 4318, query API on 16686, health on 13133", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
