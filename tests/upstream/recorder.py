#!/usr/bin/env python3
"""A local upstream "API" for sidekey's proxy tests.

It records every request it receives (method, path, headers, body size and
SHA-256) as one JSON line in --log, and answers:

  /echo...            200 with the request as JSON
  /status/NNN         that status
  /redirect           302 to another host
  /sse?n=N&gap_ms=M   N server-sent events, M ms apart
  /bytes?n=N          N bytes, streamed in 64 KiB chunks
  /upload             consumes the body; answers its length and SHA-256
  /slow?ms=M          waits M ms, then 200
  /gzip               the request's headers, gzip-compressed whatever it accepts
  /ws                 WebSocket echo; "tell me the key" gets the Authorization back
  /mirror?chunk=N     echoes the request's headers and target into its
                      response headers (X-Echo-*, Link) and into a chunked
                      body sent N bytes a chunk, as a misbehaving API would
  /sse-echo?gap_ms=M  two events carrying the request's Authorization and
                      target, M ms apart

With --cert and --key it serves TLS. It prints "READY <port>" when listening.
Only ever binds 127.0.0.1.
"""
import argparse
import base64
import gzip
import hashlib
import json
import socketserver
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

LOG_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, body_len, body_sha):
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": body_len,
            "body_sha256": body_sha,
            "sni": getattr(self.server, "last_sni", None),
        }
        with LOG_LOCK, open(self.server.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def read_body(self):
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    digest.update(chunk)
                    total += len(chunk)
                    remaining -= len(chunk)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
                remaining -= len(chunk)
        return total, digest.hexdigest()

    def send_json(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.record(0, None)
            return self.websocket()
        body_len, body_sha = self.read_body()
        self.record(body_len, body_sha)
        if url.path.startswith("/status/"):
            return self.send_json(int(url.path.split("/")[2]), {"status": "as asked"})
        if url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://elsewhere.sidekey.test/landing")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/sse":
            n = int(query.get("n", ["5"])[0])
            gap = int(query.get("gap_ms", ["200"])[0]) / 1000
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(n):
                event = f"data: event {i} at {time.time():.3f}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(gap)
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/gzip":
            # An upstream that compresses whatever the client accepts.
            body = gzip.compress(json.dumps({"headers": dict(self.headers.items())}).encode())
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if url.path == "/mirror":
            chunk = int(query.get("chunk", ["7"])[0])
            echo = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
            self.send_response(200)
            for k, v in self.headers.items():
                self.send_header("X-Echo-" + k, v)
            self.send_header("Link", f"<{self.path}>; rel=self")
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(echo), chunk):
                piece = echo[i : i + chunk]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.001)
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/sse-echo":
            gap = int(query.get("gap_ms", ["300"])[0]) / 1000
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(2):
                said = self.headers.get("Authorization", "") + " " + self.path
                event = f"data: event {i} at {time.time():.3f} {said}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(gap)
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/bytes":
            n = int(query.get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = bytes(range(256)) * 256
            sent = 0
            while sent < n:
                piece = chunk[: min(len(chunk), n - sent)]
                self.wfile.write(piece)
                sent += len(piece)
            return
        if url.path == "/upload":
            return self.send_json(200, {"len": body_len, "sha256": body_sha})
        if url.path == "/slow":
            time.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
            return self.send_json(200, {"slow": True})
        return self.send_json(200, {"method": self.command, "path": self.path, "headers": dict(self.headers.items())})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode = head[0] & 0x0F
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                return
            if data == b"tell me the key":
                # An upstream that repeats the credential it was sent: whole,
                # then fragmented so that it straddles two frames.
                said = ("auth=" + self.headers.get("Authorization", "")).encode()
                half = len(said) // 2
                for first, part in ((0x81, said), (0x01, said[:half]), (0x80, said[half:])):
                    self.wfile.write(bytes([first, len(part)]) + part)
                self.wfile.flush()
                continue
            frame = bytes([0x80 | opcode])
            if len(data) < 126:
                frame += bytes([len(data)])
            else:
                frame += bytes([126]) + struct.pack(">H", len(data))
            self.wfile.write(frame + data)
            self.wfile.flush()


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    server.log_path = args.log
    server.last_sni = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)

        def remember_sni(sock, name, ctx):
            server.last_sni = name

        context.sni_callback = remember_sni
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
