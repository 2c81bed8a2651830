"""A stand-in for llama.cpp's ``llama-server`` that tests start as a process: it takes the
flags the gateway passes (``--port``, ``--alias``, ``--parallel``, ...), answers ``/health``
with 503 for its first 0.3 s ("loading the model") and 200 after, and answers chat
completions with ``n`` choices of one word each.

``--ignore-n`` answers one choice whatever ``n`` is (as llama-cpp-python's server does);
``--refuse-n`` answers ``n > 1`` with llama-server 0.3.16's 500; ``--exit-code C`` exits at
once (a broken build); ``--crash-on-chat`` dies with SIGILL on its first chat call (a build
with instructions the CPU refuses); ``--usage-of-one`` reports the usage of one choice (as
llama-server 0.3.36 does for ``n``). Its command line is written to ``$FAKE_LLAMA_ARGV_FILE``
when set.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOADING_S = 0.3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default="fake")
    parser.add_argument("--ignore-n", action="store_true")
    parser.add_argument("--refuse-n", action="store_true")
    parser.add_argument("--exit-code", type=int)
    parser.add_argument("--crash-on-chat", action="store_true")
    parser.add_argument("--usage-of-one", action="store_true")
    args, _ = parser.parse_known_args()
    if argv_file := os.environ.get("FAKE_LLAMA_ARGV_FILE"):
        with open(argv_file, "w") as out:
            json.dump(sys.argv[1:], out)
    if args.exit_code is not None:
        sys.exit(args.exit_code)
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                loaded = time.monotonic() - started > LOADING_S
                self._send(200 if loaded else 503, {"status": "ok" if loaded else "loading"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": args.alias}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if args.crash_on_chat:
                # Directed at this thread, so it cannot go on to answer before the process
                # dies (a signal sent to the process may be delivered to the main thread).
                signal.pthread_kill(threading.get_ident(), signal.SIGILL)
                time.sleep(60)
            n = int(body.get("n", 1))
            if n > 1 and args.refuse_n:
                self._send(500, {"error": {"code": 500, "type": "server_error",
                                           "message": "Only one completion choice is allowed"}})
                return
            count = 1 if args.ignore_n else n
            spent = 1 if args.usage_of_one else count  # one token a choice
            self._send(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "model": args.alias,
                "choices": [{"index": i, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "Hello"}}
                            for i in range(count)],
                "usage": {"prompt_tokens": 3, "completion_tokens": spent,
                          "total_tokens": 3 + spent}})

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
