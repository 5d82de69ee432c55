"""What the Python stand-ins share: a JSON-replying request handler, and running as PID 1."""

import json
import signal
import sys
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body, content_type="application/json"):
        """Sends `body`: bytes as they are, anything else as JSON."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet: scrapes and span exports come every few seconds
        pass


def exit_on_sigterm():
    """PID 1 in a container: without a handler SIGTERM is ignored, and `docker stop` waits 10 s."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
