"""A stand-in for the scaler as a hub-managed service (the real one needs Spark).

Usage: standin_service.py EVENTS_FILE. Serves `<JUPYTERHUB_SERVICE_PREFIX>events`
with the events secret configure() gives the service (as the scaler reads it), on the
port of JUPYTERHUB_SERVICE_URL, and appends each event to EVENTS_FILE as a JSON line `[action, user, server]`.
Stops on SIGTERM or SIGINT.
"""

import asyncio
import json
import os
import signal
import sys
from urllib.parse import urlsplit

from tornado.web import Application

from jhub_spark_scaler.constants import EVENTS_SECRET_ENV
from jhub_spark_scaler.events import make_events_route


async def serve(events_file: str) -> None:
    def on_event(action: str, user: str, server: str) -> None:
        with open(events_file, "a", encoding="utf-8") as f:
            f.write(json.dumps([action, user, server]) + "\n")

    route = make_events_route(
        os.environ["JUPYTERHUB_SERVICE_PREFIX"], token=os.environ[EVENTS_SECRET_ENV], on_event=on_event
    )
    server = Application([route]).listen(urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port, "127.0.0.1")
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    await stopping.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
