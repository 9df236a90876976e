"""Real clients of `ember serve`, for tests/serve.rs: the official `openai` package (3.57) and the
official `wyoming` package's AsyncTcpClient (1.10.2). Each command prints one JSON object of
what the client saw; the Rust test compares it with `ember generate --chat` and llama.cpp's
recorded replies.

    python3 serve_clients.py openai URL PROMPT MAX_TOKENS      plain, streamed, history, bad requests
    python3 serve_clients.py disconnect URL PROMPT             a stream closed after 3 chunks,
                                                               a plain request given up after 1 s
    python3 serve_clients.py conversation URL                  continued, then replayed
    python3 serve_clients.py auth URL KEY                      no key, a wrong key, the key
    python3 serve_clients.py ask URL PROMPT                    one chat
    python3 serve_clients.py ask-status URL PROMPT             one chat that must fail: its error
    python3 serve_clients.py load URL CLIENTS                  CLIENTS concurrent chats
    python3 serve_clients.py wyoming HOST PORT PROMPT          describe, one transcript
    python3 serve_clients.py barge-in HOST PORT FIRST SECOND   a transcript during a reply
"""

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

import openai


def client(url, key="none", retries=0):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=retries, timeout=120)


def chat(c, messages, **kw):
    r = c.chat.completions.create(model="ember", messages=messages, **kw)
    choice = r.choices[0]
    return {
        "text": choice.message.content,
        "finish_reason": choice.finish_reason,
        "usage": r.usage.model_dump() if r.usage else None,
        "model": r.model,
    }


def stream(c, messages, **kw):
    chunks, finish, usage, roles = [], None, None, []
    for chunk in c.chat.completions.create(
        model="ember", messages=messages, stream=True,
        stream_options={"include_usage": True}, **kw
    ):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                chunks.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return {"text": "".join(chunks), "chunks": len(chunks), "finish_reason": finish,
            "usage": usage, "roles": roles}


def raw(url, body, headers=None):
    """POSTs raw bytes; returns (status, parsed error body, Retry-After)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers.get("Retry-After")


def refusal(call):
    """The status and OpenAI error of a request the server must refuse."""
    try:
        call()
    except openai.APIStatusError as e:
        error = e.body if isinstance(e.body, dict) else {}
        return {"status": e.status_code, "type": error.get("type"), "param": error.get("param"),
                "code": error.get("code"), "message": error.get("message")}
    return {"status": 200}


def openai_checks(url, prompt, max_tokens):
    c = client(url)
    out = {"models": [m.id for m in c.models.list().data]}
    user = [{"role": "user", "content": prompt}]
    out["plain"] = chat(c, user, max_tokens=max_tokens)
    out["streamed"] = stream(c, user, max_tokens=max_tokens)
    out["max_completion_tokens"] = chat(c, user, max_completion_tokens=4)
    # A conversation that extends what the device holds (only the new message is sent), then
    # the same request after another conversation moved the device (replayed as history).
    second = user + [{"role": "assistant", "content": out["plain"]["text"]},
                     {"role": "user", "content": "And then?"}]
    out["extended"] = chat(c, second, max_tokens=max_tokens)
    out["other"] = chat(c, [{"role": "user", "content": "Something else."}], max_tokens=4)
    out["replayed"] = chat(c, second, max_tokens=max_tokens)
    # Content as parts, and a system message.
    parts = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": prompt}]}]
    out["parts"] = chat(c, parts, max_tokens=max_tokens)
    out["bad"] = {
        "negative_max_tokens": refusal(lambda: c.chat.completions.create(
            model="ember", messages=user, max_tokens=-1)),
        "unknown_role": refusal(lambda: c.chat.completions.create(
            model="ember", messages=[{"role": "wizard", "content": "hi"}])),
        "last_not_user": refusal(lambda: c.chat.completions.create(
            model="ember", messages=user + [{"role": "assistant", "content": "x"}])),
        "temperature": refusal(lambda: c.chat.completions.create(
            model="ember", messages=user, temperature=7)),
        "too_many_stops": refusal(lambda: c.chat.completions.create(
            model="ember", messages=user, stop=["a", "b", "c", "d", "e"])),
        "too_long_for_context": refusal(lambda: c.chat.completions.create(
            model="ember", messages=[{"role": "user", "content": "hello " * 3000}])),
        "streamed_unknown_role": refusal(lambda: list(c.chat.completions.create(
            model="ember", messages=[{"role": "wizard", "content": "hi"}], stream=True))),
    }
    completions = url + "/chat/completions"
    status, body, _ = raw(completions, b"{not json")
    out["bad"]["invalid_json"] = {"status": status, "type": body["error"]["type"],
                                  "message": body["error"]["message"]}
    status, body, _ = raw(completions, b'{"messages": ' + b'"x" ' * (1 << 19) + b"}")
    out["bad"]["oversized"] = {"status": status, "type": body["error"]["type"],
                               "message": body["error"]["message"]}
    try:
        urllib.request.urlopen(url + "/nothing-here", timeout=30)
    except urllib.error.HTTPError as e:
        out["bad"]["unknown_url"] = {"status": e.code, "code": json.loads(e.read())["error"]["code"]}
    # The server still answers after all that.
    out["after"] = chat(c, user, max_tokens=max_tokens)
    return out


def conversation(url):
    """A conversation continued (the device's cache holds its start) and replayed after
    another one moved the device."""
    c = client(url)
    first = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    a = chat(c, first, max_tokens=64)
    second = first + [{"role": "assistant", "content": a["text"]},
                      {"role": "user", "content": "And of Italy?"}]
    continued = chat(c, second, max_tokens=64)
    other = chat(c, [{"role": "user", "content": "Name a colour."}], max_tokens=16)
    replayed = chat(c, second, max_tokens=64)
    return {"first": a, "continued": continued, "other": other, "replayed": replayed}


def disconnect(url, prompt):
    c = client(url)
    s = c.chat.completions.create(model="ember", messages=[{"role": "user", "content": prompt}],
                                  max_tokens=400, stream=True)
    received = []
    for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
        if len(received) >= 3:
            break
    s.close()  # closes the HTTP connection mid-stream
    time.sleep(1.0)
    # A plain (not streamed) request given up after 1 s.
    body = json.dumps({"model": "ember", "max_tokens": 400,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    request = urllib.request.Request(url + "/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=1).read()
        gave_up = False
    except (TimeoutError, urllib.error.URLError):
        gave_up = True
    time.sleep(1.0)
    after = chat(c, [{"role": "user", "content": prompt}], max_tokens=8)
    return {"received": "".join(received), "after": after, "gave_up": gave_up}


def auth(url, key):
    user = [{"role": "user", "content": "hi"}]
    body = json.dumps({"model": "ember", "messages": user, "max_tokens": 2}).encode()
    status, error, _ = raw(url + "/chat/completions", body)  # no Authorization header
    return {
        "missing": {"status": status, "code": error["error"]["code"]},
        "wrong": refusal(lambda: client(url, key=key + "x").chat.completions.create(
            model="ember", messages=user, max_tokens=2)),
        "right": chat(client(url, key=key), user, max_tokens=2),
    }


async def load(url, clients):
    c = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)

    async def one(i):
        started = time.time()
        try:
            r = await c.chat.completions.with_raw_response.create(
                model="ember", max_tokens=16,
                messages=[{"role": "user", "content": "Client %d says hello." % i}])
            body = r.parse()
            return {"status": 200, "text": body.choices[0].message.content,
                    "seconds": time.time() - started}
        except openai.APIStatusError as e:
            return {"status": e.status_code, "retry_after": e.response.headers.get("Retry-After"),
                    "code": (e.body or {}).get("code") if isinstance(e.body, dict) else None,
                    "seconds": time.time() - started}
        except Exception as e:  # noqa: BLE001 - reported, the test fails on it
            return {"status": None, "error": repr(e), "seconds": time.time() - started}

    started = time.time()
    results = await asyncio.gather(*(one(i) for i in range(clients)))
    return {"results": results, "seconds": time.time() - started}


async def wyoming_checks(host, port, prompt):
    from wyoming.asr import Transcript
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    async with AsyncTcpClient(host, port) as c:
        await c.write_event(Describe().event())
        info = Info.from_event(await c.read_event())
        await c.write_event(Transcript(text=prompt).event())
        events = await until_done(c)
        await c.write_event(Transcript(text="").event())
        empty = await until_done(c)
    handle = info.handle[0]
    return {
        "info": {"name": handle.name, "description": handle.description,
                 "attribution": handle.attribution.name, "version": handle.version,
                 "installed": handle.installed,
                 "languages": handle.models[0].languages, "model": handle.models[0].name,
                 "streaming": handle.supports_handled_streaming},
        "events": events,
        "empty": empty,
    }


async def until_done(c, streamed=False):
    """Reads one reply's events: up to handled-stop when streamed (handled-start came, maybe
    before), else up to handled or not-handled."""
    events = []
    while True:
        event = await asyncio.wait_for(c.read_event(), 120)
        if event is None:
            events.append({"type": "closed"})
            return events
        events.append({"type": event.type, "text": event.data.get("text")})
        streamed = streamed or event.type == "handled-start"
        if event.type in ("handled-stop", "not-handled") or (
                event.type == "handled" and not streamed):
            return events


async def barge_in(host, port, first, second):
    from wyoming.asr import Transcript
    from wyoming.client import AsyncTcpClient

    async with AsyncTcpClient(host, port) as c:
        await c.write_event(Transcript(text=first).event())
        before = []
        while True:
            event = await asyncio.wait_for(c.read_event(), 120)
            before.append({"type": event.type, "text": event.data.get("text")})
            if event.type == "handled-chunk":
                break
        await c.write_event(Transcript(text=second).event())
        first_end = await until_done(c, streamed=True)
        second_reply = await until_done(c)
    return {"first": before + first_end, "second": second_reply}


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "openai":
        result = openai_checks(args[0], args[1], int(args[2]))
    elif command == "conversation":
        result = conversation(args[0])
    elif command == "disconnect":
        result = disconnect(args[0], args[1])
    elif command == "ask-status":
        result = refusal(lambda: client(args[0]).chat.completions.create(
            model="ember", messages=[{"role": "user", "content": args[1]}], max_tokens=8))
    elif command == "ask":
        result = chat(client(args[0]), [{"role": "user", "content": args[1]}], max_tokens=8)
    elif command == "auth":
        result = auth(args[0], args[1])
    elif command == "load":
        result = asyncio.run(load(args[0], int(args[1])))
    elif command == "wyoming":
        result = asyncio.run(wyoming_checks(args[0], int(args[1]), args[2]))
    elif command == "barge-in":
        result = asyncio.run(barge_in(args[0], int(args[1]), args[2], args[3]))
    else:
        raise SystemExit("unknown command " + command)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
