"""moto's server, with DynamoDB requests applied one at a time.

Real DynamoDB applies a conditional write atomically: two `UpdateItem`s with
`attribute_not_exists(...)` on one item never both succeed. moto's threaded
server checks the condition and writes in two steps without a lock, so under
concurrent requests both can win (measured: 1 item in 200 with 4 writers).
The controller's claim-before-send relies on the real guarantee, so the
stack serialises DynamoDB calls (cheap: each is a few milliseconds) and leaves
every other service threaded (SQS long polls must not block the rest).

usage: moto_server.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


class SerialDynamo:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with self.lock:
                # The body is built inside the lock: moto may compute it lazily.
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        host,
        port,
        SerialDynamo(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
