"""A fake EC2 instance metadata service (IMDSv2 only) on 127.0.0.1, for the Spot notice tests.

It answers what the worker asks: ``PUT /latest/api/token`` (needs the TTL header, as IMDSv2 does),
then ``GET /latest/meta-data/spot/instance-action`` and ``…/events/recommendations/rebalance`` with
that token (401 without it, 404 while no notice is posted, the notice's JSON once one is).
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shardq.worker.stop import INSTANCE_ACTION, REBALANCE


class FakeImds:
    """``with FakeImds() as imds: imds.interrupt()``; ``imds.endpoint`` is its base URL."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.notices: dict[str, dict[str, Any]] = {}
        self.values: dict[str, str] = {}
        self.requests: list[tuple[str, str, int]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    return self._answer(400, "")
                self._answer(200, fake.token)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != fake.token:
                    return self._answer(401, "")
                if self.path in fake.values:  # plain metadata (instance-type...): shardq.worker.pricing
                    return self._answer(200, fake.values[self.path])
                notice = fake.notices.get(self.path)
                self._answer(200, json.dumps(notice)) if notice else self._answer(404, "")

            def _answer(self, status: int, body: str) -> None:
                fake.requests.append((self.command, self.path, status))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def interrupt(self, action: str = "terminate", time: str = "2026-12-07T12:00:00Z") -> None:
        """Post a Spot interruption notice (what EC2 does two minutes ahead)."""
        self.notices[INSTANCE_ACTION] = {"action": action, "time": time}

    def recommend_rebalance(self, time: str = "2026-12-07T11:50:00Z") -> None:
        """Post a rebalance recommendation."""
        self.notices[REBALANCE] = {"noticeTime": time}

    def expire_token(self) -> None:
        """Forget the session token: the next GET answers 401, as after its TTL."""
        self.token = secrets.token_hex(16)

    def __enter__(self) -> FakeImds:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
