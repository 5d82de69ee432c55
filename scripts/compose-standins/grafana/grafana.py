"""A stand-in for the Grafana image, for scripts/test-compose (no registry here ships Grafana).

It reads the provisioning that compose mounts, the way Grafana does, and refuses to start if
that is broken (Grafana would start and log the error; failing loudly is more useful in a test):
- datasources from /etc/grafana/provisioning/datasources/*.yaml,
- dashboard providers from /etc/grafana/provisioning/dashboards/*.yaml, then the dashboards in
  each provider's `options.path`,
- the home dashboard from GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH, if set.

It serves, on 3000, the HTTP API a test reads: GET /api/health, /api/search,
/api/dashboards/uid/{uid}, /api/dashboards/home, /api/datasources, and the data source proxy
/api/datasources/proxy/uid/{uid}/{path} (GET), which forwards to the data source's URL as
Grafana does. Not served: the UI, users and logins (compose turns anonymous Admin on), alerting,
panels' rendering, any storage.
"""

import glob
import json
import os
import sys
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from urllib.parse import urlparse

import yaml
from standin import Handler, exit_on_sigterm

PROVISIONING = os.environ.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")


def load():
    datasources, dashboards = {}, {}
    for path in sorted(glob.glob(f"{PROVISIONING}/datasources/*.y*ml")):
        for ds in (yaml.safe_load(open(path)) or {}).get("datasources", []):
            datasources[ds["uid"]] = ds
    for path in sorted(glob.glob(f"{PROVISIONING}/dashboards/*.y*ml")):
        for provider in (yaml.safe_load(open(path)) or {}).get("providers", []):
            folder = provider["options"]["path"]
            files = sorted(glob.glob(f"{folder}/*.json"))
            if not files:
                sys.exit(f"grafana stand-in: provider {provider['name']!r}: no dashboards in {folder}")
            for file in files:
                dashboard = json.load(open(file))
                dashboards[dashboard["uid"]] = dashboard
    home = os.environ.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    home_dashboard = json.load(open(home)) if home else None
    return datasources, dashboards, home_dashboard


DATASOURCES, DASHBOARDS, HOME = load()


class Grafana(Handler):
    def do_GET(self):
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        if parts == ["api", "health"]:
            return self.reply(200, {"database": "ok", "version": "stand-in"})
        if parts == ["api", "search"]:
            return self.reply(200, [{"uid": uid, "title": d.get("title"), "type": "dash-db"}
                                    for uid, d in DASHBOARDS.items()])
        if parts == ["api", "dashboards", "home"] and HOME is not None:
            return self.reply(200, {"dashboard": HOME, "meta": {"provisioned": True}})
        if parts[:3] == ["api", "dashboards", "uid"] and len(parts) == 4 and parts[3] in DASHBOARDS:
            return self.reply(200, {"dashboard": DASHBOARDS[parts[3]], "meta": {"provisioned": True}})
        if parts == ["api", "datasources"]:
            return self.reply(200, list(DATASOURCES.values()))
        if parts[:4] == ["api", "datasources", "proxy", "uid"] and len(parts) > 4:
            return self.proxy(parts[4], "/".join(parts[5:]), url.query)
        self.reply(404, {"message": "not served by the Grafana stand-in"})

    def proxy(self, uid, path, query):
        ds = DATASOURCES.get(uid)
        if ds is None:
            return self.reply(404, {"message": f"no data source {uid}"})
        target = f"{ds['url'].rstrip('/')}/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(target, timeout=10) as response:
                return self.reply(response.status, response.read(), response.headers.get("Content-Type"))
        except urllib.error.HTTPError as e:
            return self.reply(e.code, e.read(), e.headers.get("Content-Type"))
        except OSError as e:
            return self.reply(502, {"message": f"data source {uid} unreachable: {e}"})


def main():
    exit_on_sigterm()
    print(f"grafana stand-in: {len(DATASOURCES)} data source(s), dashboards {sorted(DASHBOARDS)}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 3000), Grafana).serve_forever()


if __name__ == "__main__":
    main()
