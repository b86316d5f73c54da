#!/usr/bin/env python3
"""A haip-rs agent worker in Python: it answers every message with its words in reverse
order ("hello big world" -> "world big hello"), streamed word by word.

    pip install -r requirements.txt
    HAIP_AGENT_TOKEN=$(haip token --secret SECRET --sub py-worker --role agent) \
        python3 python_worker.py

The server (`haip serve --agent workers`) sends each user message as a job (RUN_STARTED);
the worker answers with MESSAGE_START / MESSAGE_PART... / MESSAGE_END and RUN_FINISHED, all
carrying the job's run_id. See README.md beside this file.
"""
import asyncio
import json
import os
import sys
import time
import uuid

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

URL = os.environ.get("HAIP_AGENT_URL", "ws://127.0.0.1:8080/haip/agent")
TOKEN = os.environ.get("HAIP_AGENT_TOKEN", "")
WORD_DELAY = 0.1  # seconds between two streamed words


def log(line):
    print(f"python-worker: {line}", file=sys.stderr, flush=True)


def answer_for(text):
    """What this worker says: the user's words, last one first."""
    return list(reversed(text.split()))


async def wait_any(*events, timeout=None):
    """Wait until one of the events is set (or the timeout passes)."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()


class Worker:
    """One connection to the server. A new one is made for every (re)connect."""

    def __init__(self, ws):
        self.ws = ws
        self.session = None  # the id the server's HAI gives this connection
        self.seq = 0  # our own envelope numbering: "1", "2", ...
        self.ack = None  # the last seq the server sent us, acknowledged in our envelopes
        self.resumed = asyncio.Event()  # cleared while the server says PAUSE_CHANNEL
        self.resumed.set()
        self.jobs = {}  # run_id -> (task, stop event)

    async def send(self, type_, payload, run_id=None, channel="AGENT"):
        # Numbered and written without waiting in between (ws.send writes a text frame
        # before it first waits), so the envelopes of all jobs reach the server in seq order.
        self.seq += 1
        env = {"id": str(uuid.uuid4()), "session": self.session, "seq": str(self.seq),
               "ts": str(int(time.time() * 1000)), "channel": channel,
               "type": type_, "payload": payload}
        if run_id:
            env["run_id"] = run_id
        if self.ack:
            env["ack"] = self.ack  # the last seq we got from the server
        await self.ws.send(json.dumps(env))

    async def run(self):
        """Read the server's envelopes until the connection ends."""
        try:
            async for raw in self.ws:
                self.handle(json.loads(raw))
        finally:
            for task, _ in list(self.jobs.values()):
                task.cancel()  # this connection's jobs cannot be answered any more

    def handle(self, env):
        kind, payload = env["type"], env.get("payload", {})
        run_id = env.get("run_id") or payload.get("run_id")
        self.ack = env.get("seq")
        if kind == "HAI":
            self.session = env["session"]
            log(f"connected to {URL.split('?')[0]}")
        elif kind == "RUN_STARTED":  # a job: one user message to answer
            stop = asyncio.Event()
            text = (payload.get("metadata") or {}).get("text", "")
            task = asyncio.create_task(self.answer(run_id, text, stop))
            self.jobs[run_id] = (task, stop)
        elif kind == "RUN_CANCEL" and run_id in self.jobs:
            self.jobs[run_id][1].set()  # the job notices and finishes CANCELLED
        elif kind == "PAUSE_CHANNEL":  # a user is not keeping up: hold our output
            log("paused by the server")
            self.resumed.clear()
        elif kind == "RESUME_CHANNEL":
            log("resumed")
            self.resumed.set()
        elif kind == "PING":
            asyncio.create_task(self.send("PONG", {"nonce": payload.get("nonce", "")},
                                          channel="SYSTEM"))
        elif kind == "ERROR":
            if payload.get("code") == "AUTHENTICATION_FAILED":
                raise SystemExit(f"python-worker: token refused: {payload.get('message')}")
            log(f"server error {payload.get('code')}: {payload.get('message')}")

    async def answer(self, run_id, text, stop):
        """One job: stream the answer word by word, unless the user cancels."""
        words, msg, status = answer_for(text), f"{run_id}-answer", "OK"
        # The answer as the envelopes to send, one word per MESSAGE_PART.
        envelopes = [("MESSAGE_START", {"message_id": msg, "author": "python-worker"})]
        envelopes += [("MESSAGE_PART", {"message_id": msg, "text": w if i == 0 else " " + w})
                      for i, w in enumerate(words)]
        envelopes.append(("MESSAGE_END", {"message_id": msg}))
        try:
            for type_, payload in envelopes:
                if type_ == "MESSAGE_PART":
                    await wait_any(stop, timeout=WORD_DELAY)  # "think"; wake on a cancel
                while not (self.resumed.is_set() or stop.is_set()):
                    await wait_any(self.resumed, stop)  # paused: hold; a cancel still wins
                if stop.is_set():  # cancelled: send nothing more but the run's end
                    status = "CANCELLED"
                    break
                await self.send(type_, payload, run_id)
            await self.send("RUN_FINISHED", {"status": status}, run_id)
        except (asyncio.CancelledError, ConnectionClosed):
            status = "connection lost"  # the server fails the runs of a worker that left
        finally:
            self.jobs.pop(run_id, None)
            log(f"job {run_id}: {len(words)} words -> {status}")


async def main():
    if not TOKEN:
        sys.exit("python-worker: set HAIP_AGENT_TOKEN to a token of role agent "
                 "(haip token --secret SECRET --sub py-worker --role agent)")
    sep = "&" if "?" in URL else "?"
    delay = 1
    while True:
        try:
            async with connect(f"{URL}{sep}token={TOKEN}") as ws:
                delay = 1  # connected: the next drop starts the backoff over
                await Worker(ws).run()
            log("connection closed")
        except Exception as e:  # refused, reset, not a worker endpoint (HTTP 404)...
            log(f"connection failed: {e}")
        log(f"reconnecting in {delay} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
