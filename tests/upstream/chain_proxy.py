#!/usr/bin/env python3
"""A local "corporate" HTTP proxy for sidekey's upstream_proxy tests.

It serves CONNECT only, recording each one (target and Proxy-Authorization)
as a JSON line in --log. It resolves the names given with --map itself, so a
request to such a name can only arrive through it. --auth USER:PASSWORD makes
it answer 407 to any other credentials; --refuse HOST makes it answer 403 to
that host.

It prints "READY <port>" when listening. Only ever binds 127.0.0.1.
"""
import argparse
import base64
import json
import socket
import socketserver
import sys
import threading

LOG_LOCK = threading.Lock()


def pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        server = self.server
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(1)
            if not data or len(head) > 65536:
                return
            head += data
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                fields[name.strip().lower()] = value.strip()
        with LOG_LOCK, open(server.log_path, "a") as f:
            entry = {
                "method": method,
                "target": target,
                "proxy_authorization": fields.get("proxy-authorization"),
            }
            f.write(json.dumps(entry) + "\n")

        if method != "CONNECT":
            return self.answer(405, "Method Not Allowed")
        if server.auth is not None and fields.get("proxy-authorization") != server.auth:
            return self.answer(
                407, "Proxy Authentication Required", 'Proxy-Authenticate: Basic realm="corp"\r\n'
            )
        host, port = target.rsplit(":", 1)
        if host in server.refuse:
            return self.answer(403, "Forbidden")
        try:
            upstream = socket.create_connection((server.names.get(host, host), int(port)), timeout=5)
        except OSError:
            return self.answer(502, "Bad Gateway")
        upstream.settimeout(None)
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        back = threading.Thread(target=pipe, args=(upstream, self.request), daemon=True)
        back.start()
        pipe(self.request, upstream)
        back.join()
        upstream.close()

    def answer(self, status, reason, extra=""):
        self.request.sendall(
            f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--auth")
    parser.add_argument("--refuse", action="append", default=[])
    parser.add_argument("--map", action="append", default=[])
    args = parser.parse_args()

    server = Server(("127.0.0.1", 0), Handler)
    server.log_path = args.log
    server.auth = "Basic " + base64.b64encode(args.auth.encode()).decode() if args.auth else None
    server.refuse = set(args.refuse)
    server.names = dict(m.split("=", 1) for m in args.map)
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
