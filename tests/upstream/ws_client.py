"""A WebSocket client written out by hand, for the proxy tests: CONNECT,
TLS with the bundle, the upgrade handshake with a placeholder key, then
echoed frames (mode "echo") or the upstream's report of its key ("probe").
"""
import base64, hashlib, json, os, socket, ssl, struct, sys

proxy_port, host, port, proxy_key, cafile, mode = sys.argv[1:7]
sock = socket.create_connection(("127.0.0.1", int(proxy_port)), timeout=20)
auth = base64.b64encode(("agent:" + proxy_key).encode()).decode()
sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
head = b""
while not head.endswith(b"\r\n\r\n") and len(head) < 65536:
    byte = sock.recv(1)
    if not byte:
        break
    head += byte
assert head.startswith(b"HTTP/1.1 200"), head

context = ssl.create_default_context(cafile=cafile)
context.set_alpn_protocols(["http/1.1"])
tls = context.wrap_socket(sock, server_hostname=host)
reader = tls.makefile("rb")

key = base64.b64encode(os.urandom(16)).decode()
tls.sendall((
    f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer placeholder\r\n\r\n"
).encode())
status = reader.readline().decode().strip()
headers = {}
while True:
    line = reader.readline().decode().strip()
    if not line:
        break
    name, _, value = line.partition(":")
    headers[name.strip().lower()] = value.strip()
expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()

def send(opcode, data):
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    tls.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

def recv():
    """One frame: (opcode, payload, fin)."""
    head = reader.read(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", reader.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", reader.read(8))[0]
    return head[0] & 0x0F, reader.read(n), bool(head[0] & 0x80)

if mode == "probe":
    # The upstream answers with the Authorization it got: once whole, once
    # fragmented across two frames. Every payload comes back as it arrived.
    send(1, b"tell me the key")
    frames = [recv() for _ in range(3)]
    send(8, b"")
    print(json.dumps({
        "status": status,
        "frames": [data.decode("latin-1") for _, data, _ in frames],
        "fins": [fin for _, _, fin in frames],
    }))
    sys.exit(0)

messages = [(1, b"hello through sidekey"), (2, os.urandom(3000)), (1, "ünïcode ✓".encode())]
echoed = []
for opcode, data in messages:
    send(opcode, data)
    got_opcode, got, _ = recv()
    echoed.append(got_opcode == opcode and got == data)
send(8, b"")
close_opcode, _, _ = recv()
print(json.dumps({
    "status": status,
    "accept_ok": headers.get("sec-websocket-accept") == expected,
    "upgrade": headers.get("upgrade", ""),
    "echoed": echoed,
    "close_opcode": close_opcode,
}))
