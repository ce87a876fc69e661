"""In-process ASGI cost per request (no network, no TLS): where the framework time goes."""
import asyncio, json, sys, tempfile, time, cProfile, pstats
from pathlib import Path
sys.path.insert(0, ".")
from mock_server.app import create_app
from mock_server.config import ServerConfig

tmp = tempfile.mkdtemp()
app = create_app(ServerConfig(data_dir=Path(tmp)), environ={})
st = app.state.ekodb
admin = st.admin_key

async def call(method, path, body=b"", headers=(), query=b""):
    hdrs = [(b"host", b"x"), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())] + list(headers)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "https", "path": path, "raw_path": path.encode(), "query_string": query,
             "root_path": "", "headers": hdrs, "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 443),
             "state": {}}
    sent = False
    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
    out = {}
    async def send(m):
        if m["type"] == "http.response.start": out["status"] = m["status"]
        elif m["type"] == "http.response.body": out["body"] = out.get("body", b"") + m.get("body", b"")
    await app(scope, receive, send)
    return out["status"], out.get("body")

async def main():
    s, b = await call("POST", "/api/auth/token", json.dumps({"api_key": admin}).encode())
    tok = json.loads(b)["token"]
    auth = [(b"authorization", f"Bearer {tok}".encode())]
    await call("POST", "/api/collections/c", headers=auth)
    await call("POST", "/api/collections/w", headers=auth)
    inserts = [{"data": {"n": i, "team": "ab"[i % 2]}} for i in range(200)]
    s, b = await call("POST", "/api/batch/insert/c", json.dumps({"inserts": inserts}).encode(), auth)
    ids = json.loads(b)["successful"]
    fb = json.dumps({"filter": {"type": "Condition", "content": {"field": "team", "operator": "Eq", "value": "a"}}, "limit": 10}).encode()
    import uuid
    ops = {
      "get": lambda i: call("GET", f"/api/find/c/{ids[i%200]}", headers=auth),
      "find": lambda i: call("POST", "/api/find/c", fb, auth),
      "insert": lambda i: call("POST", "/api/insert/w", json.dumps({"n": i, "team": "c"}).encode(), auth + [(b"idempotency-key", uuid.uuid4().hex.encode())]),
      "send": lambda i: call("POST", "/api/queue/q/send", json.dumps({"n": i}).encode(), auth + [(b"idempotency-key", uuid.uuid4().hex.encode())]),
    }
    which = sys.argv[1:] or list(ops)
    for name in which:
        op = ops[name]
        s, b = await op(0); assert s == 200, (s, b)
        n = int(__import__("os").environ.get("N", "1000"))
        t = time.process_time(); tm = time.thread_time()
        for i in range(n): await op(i)
        cpu = (time.process_time()-t)/n*1e6; loop = (time.thread_time()-tm)/n*1e6
        print(f"{name}: {cpu:.0f} us CPU/req in-process (event loop {loop:.0f}, other threads {cpu-loop:.0f})")
    if "--prof" in sys.argv[-1:]:
        pass

if len(sys.argv) > 1 and sys.argv[1] == "prof":
    op = sys.argv[2]
    sys.argv = [sys.argv[0], op]
    asyncio.run(main())
    pr = cProfile.Profile(time.thread_time)
    pr.enable(); sys.argv=[sys.argv[0], op]; asyncio.run(main()); pr.disable()
    pstats.Stats(pr).sort_stats(__import__("os").environ.get("SORT","cumulative")).print_stats(int(__import__("os").environ.get("TOP","60")))
else:
    asyncio.run(main())
