"""A tiny OpenAI-compatible chat server on 127.0.0.1 for tests (no network).

Every request takes the next behaviour from ``server.script`` (default
``"good"``):

``"good"``     JSON ratings: 3 for concepts whose words include "good" or "bad", else 1;
               for a label question, the label whose name appears in the concept words
``"garbled"``  unreadable text
``"slow"``     sleeps ``server.delay`` seconds, then answers like "good"
``"429"``      HTTP 429 with ``Retry-After: 0``
``"500"``      HTTP 500
``"401"``      HTTP 401 (the key was refused)
``"403"``      HTTP 403 (the key may not use this model)

Every error message echoes the request's ``Authorization`` header, as some
servers and proxies do, so tests can check that the key never leaks.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def good_answer(prompt: str) -> str:
    if "Possible answers:" in prompt:
        answers = re.search(r"Possible answers: (.*)", prompt).group(1).split(", ")
        words = prompt.lower()
        hit = "positive" if any(w in words for w in ("good", "great")) else "negative"
        return json.dumps({"answer": hit if hit in answers else answers[0]})
    blocks = re.findall(r"Concept ([A-Z])\n(.*?)(?:\n\n|$)", prompt, flags=re.DOTALL)
    ratings = {letter: {"rating": 3 if re.search(r"\b(good|bad)\b", body) else 1, "reason": "canned"}
               for letter, body in blocks}
    return "Here you go:\n```json\n" + json.dumps(ratings) + "\n```"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with server.lock:
            mode = server.script.pop(0) if server.script else "good"
            server.requests.append({"mode": mode, "body": body})
        if mode in ("401", "403", "429", "500"):
            echo = self.headers.get("Authorization", "")
            self._send(int(mode), {"error": {"message": f"fake {mode} for {echo}", "type": "fake"}},
                       {"Retry-After": "0"})
            return
        if mode == "slow":
            time.sleep(server.delay)
        prompt = body["messages"][-1]["content"]
        answer = server.answer or good_answer
        content = "I think they are all fine lol {rating: maybe" if mode == "garbled" else answer(prompt)
        self._send(200, {"id": "fake", "object": "chat.completion", "created": 0, "model": body.get("model", "fake"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _send(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass


def start_server(delay: float = 2.0, answer=None):
    """Start the server in a thread; ``answer(prompt) -> str`` replaces :func:`good_answer` for "good" requests."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.script, server.requests, server.lock, server.delay = [], [], threading.Lock(), delay
    server.answer = answer
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return server
