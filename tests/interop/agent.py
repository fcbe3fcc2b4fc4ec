#!/usr/bin/env python3
"""A frame protocol v1 edge agent written against Google's protobuf for Python.

It uses only `frames_pb2` generated from the repository's proto/frames.proto by
`python -m grpc_tools.protoc`, so it checks that corelane's worker speaks the wire format
another protobuf implementation produces and expects. Run by tests/frames_interop.rs:

    python agent.py --addr 127.0.0.1:PORT --gen DIR_WITH_frames_pb2

Exit status 0 when every check held; otherwise a message naming the mismatch and status 1.
"""

import argparse
import socket
import struct
import sys
import time

WIDTH, HEIGHT = 320, 240
FRAMES = 24
WARM_UP = 12  # frames before the box must be exact (background, then clear of the start)
TOL = 3.0  # pixels per box edge (the detector works at half resolution)
RECT_W, RECT_H = 40, 30
STREAM = "py-cam"
SESSION = "py-session"


class Mismatch(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Mismatch(what)


class Conn:
    def __init__(self, pb, addr):
        host, port = addr.rsplit(":", 1)
        self.pb = pb
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sent = 0
        self.granted = 2
        self.window_updates = []

    def send_env(self, env):
        body = env.SerializeToString()
        self.sock.sendall(struct.pack("<I", len(body)) + body)
        self.sent += 1

    def send(self, field, msg, msg_type, version=1):
        env = self.pb.Envelope(protocol_version=version, stream_id=STREAM, msg_type=msg_type)
        getattr(env, field).CopyFrom(msg)
        self.send_env(env)

    def recv_env(self):
        """The next Envelope, or None at end of stream."""
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack("<I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    env = self.pb.Envelope()
                    env.ParseFromString(self.buf[4 : 4 + n])
                    self.buf = self.buf[4 + n :]
                    return env
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def recv(self):
        """The next non-Heartbeat Envelope, checked for the v1 header."""
        while True:
            env = self.recv_env()
            check(env is not None, "the worker closed the connection unexpectedly")
            check(env.protocol_version == 1, f"worker sent protocol_version {env.protocol_version}")
            which = env.WhichOneof("payload")
            check(which is not None, f"worker sent an envelope with no payload: {env}")
            expect = {
                "init_ok": self.pb.MSG_TYPE_INIT_OK,
                "result": self.pb.MSG_TYPE_RESULT,
                "error": self.pb.MSG_TYPE_ERROR,
                "window_update": self.pb.MSG_TYPE_WINDOW_UPDATE,
                "heartbeat": self.pb.MSG_TYPE_HEARTBEAT,
            }
            check(which in expect, f"worker sent an agent-to-worker message {which}")
            check(env.msg_type == expect[which], f"msg_type {env.msg_type} with payload {which}")
            check(env.stream_id == STREAM, f"stream_id echoed as {env.stream_id!r}")
            if which == "window_update":
                w = env.window_update.new_window
                check(1 <= w <= self.granted, f"WindowUpdate to {w}, granted {self.granted}")
                self.window_updates.append(w)
                continue
            if which != "heartbeat":
                return env


def rect_x(i):
    return 20 + 6 * i


def rect_y(i):
    return 60 + (i % 10)


def nv12_frame(pb, i, frame_id):
    """A dark frame with a bright rectangle; planes described explicitly."""
    y = bytearray([16]) * (WIDTH * HEIGHT)
    x0, y0 = rect_x(i), rect_y(i)
    row = bytes([235]) * RECT_W
    for r in range(y0, y0 + RECT_H):
        y[r * WIDTH + x0 : r * WIDTH + x0 + RECT_W] = row
    uv = bytes([128]) * (WIDTH * HEIGHT // 2)
    data = bytes(y) + uv
    planes = [
        pb.Plane(stride=WIDTH, offset=0, size=WIDTH * HEIGHT),
        pb.Plane(stride=WIDTH, offset=WIDTH * HEIGHT, size=WIDTH * HEIGHT // 2),
    ]
    now = time.monotonic_ns()
    return pb.Frame(
        frame_id=frame_id,
        ts_mono_ns=now,
        ts_pdt_ns=now,
        ts_utc_ns=time.time_ns(),
        width=WIDTH,
        height=HEIGHT,
        pixel_format=pb.PF_NV12,
        codec=pb.CODEC_NONE,
        planes=planes,
        color_space="BT.709",
        color_range="full",
        data=data,
        session_id=SESSION,
    ), (float(x0), float(y0), float(x0 + RECT_W), float(y0 + RECT_H))


def run(pb, addr):
    c = Conn(pb, addr)
    caps = pb.Capabilities(
        accepted_pixel_formats=[pb.PF_NV12, pb.PF_I420],
        accepted_codecs=[pb.CODEC_NONE],
        max_width=WIDTH,
        max_height=HEIGHT,
        max_inflight=2,
        supports_letterbox=False,
        supports_normalize=False,
        preferred_layout="NCHW",
        preferred_dtype="uint8",
        prefer_jpeg=False,
        desired_policy=pb.FIFO,
        desired_fps=5.0,
    )
    c.send("init", pb.Init(model="motion", caps=caps, session_id=SESSION), pb.MSG_TYPE_INIT)
    env = c.recv()
    check(env.WhichOneof("payload") == "init_ok", f"expected InitOk, got {env}")
    ok = env.init_ok
    ch = ok.chosen
    check(ch.pixel_format == pb.PF_NV12, f"chosen pixel_format {ch.pixel_format}")
    check(ch.codec == pb.CODEC_NONE, f"chosen codec {ch.codec}")
    check((ch.width, ch.height) == (WIDTH, HEIGHT), f"chosen size {ch.width}x{ch.height}")
    check(ch.initial_credits == 2, f"initial_credits {ch.initial_credits}, asked at most 2")
    check(ch.policy == pb.FIFO, f"policy {ch.policy}, asked FIFO")
    check(0 < ch.fps_target <= 5.0, f"fps_target {ch.fps_target}, asked 5")
    check(ch.color_space != "" and ch.color_range != "", f"color {ch.color_space!r} {ch.color_range!r}")
    check(ok.max_frame_bytes == WIDTH * HEIGHT * 3 // 2, f"max_frame_bytes {ok.max_frame_bytes}")
    model = (ok.model_family, ok.model_name, ok.model_version)
    check(all(model), f"model identity {model}")
    print(f"InitOk: {ch.width}x{ch.height} NV12 window {ch.initial_credits}, model {model}")

    exact = 0
    for i in range(FRAMES):
        frame_id = 1000 + 3 * i
        frame, truth = nv12_frame(pb, i, frame_id)
        c.send("frame", frame, pb.MSG_TYPE_FRAME)
        env = c.recv()
        check(env.WhichOneof("payload") == "result", f"frame {frame_id}: expected Result, got {env}")
        r = env.result
        check(r.frame_id == frame_id, f"Result.frame_id {r.frame_id}, sent {frame_id}")
        check(r.HasField("frame_ref"), f"frame {frame_id}: no frame_ref")
        check(r.frame_ref.ts_mono_ns == frame.ts_mono_ns, f"frame_ref.ts_mono_ns {r.frame_ref.ts_mono_ns}")
        check(r.frame_ref.ts_utc_ns == frame.ts_utc_ns, f"frame_ref.ts_utc_ns {r.frame_ref.ts_utc_ns}")
        check(r.frame_ref.session_id == SESSION, f"frame_ref.session_id {r.frame_ref.session_id!r}")
        check((r.model_family, r.model_name, r.model_version) == model, f"Result model fields {r}")
        check(r.HasField("lat"), f"frame {frame_id}: no latency breakdown")
        lat = r.lat
        check(lat.pre_ms > 0 and lat.infer_ms > 0 and lat.post_ms >= 0, f"latency {lat}")
        check(lat.total_ms + 0.01 >= lat.pre_ms + lat.infer_ms + lat.post_ms, f"total below parts {lat}")
        if i >= WARM_UP:
            items = r.detections.items
            check(len(items) == 1, f"frame {frame_id}: {len(items)} detections, one rectangle: {items}")
            d = items[0]
            b = (d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2)
            check(b[2] > b[0] and b[3] > b[1], f"frame {frame_id}: bbox {b} is not xyxy")
            check(all(abs(a - t) <= TOL for a, t in zip(b, truth)), f"frame {frame_id}: bbox {b}, rectangle {truth}")
            check(0 < d.conf <= 1, f"conf {d.conf}")
            check(d.cls != "" and d.track_id.startswith("T"), f"cls {d.cls!r} track {d.track_id!r}")
            exact += 1
    print(f"{FRAMES} Results, {exact} boxes on the rectangle within {TOL} px")

    # A bad version: VERSION_UNSUPPORTED, and the session goes on.
    c.send("heartbeat", pb.Heartbeat(last_frame_id=0, tx=c.sent, rx=0), pb.MSG_TYPE_HEARTBEAT, version=2)
    env = c.recv()
    check(env.WhichOneof("payload") == "error", f"bad version: expected Error, got {env}")
    check(env.error.code == pb.VERSION_UNSUPPORTED, f"bad version: code {env.error.code}")
    print(f"bad version: {pb.ErrorCode.Name(env.error.code)} ({env.error.message})")

    # A heartbeat with a good version is taken silently; a frame still gets its Result.
    c.send("heartbeat", pb.Heartbeat(last_frame_id=1000 + 3 * (FRAMES - 1), tx=c.sent, rx=0), pb.MSG_TYPE_HEARTBEAT)
    frame, _ = nv12_frame(pb, FRAMES, 5000)
    c.send("frame", frame, pb.MSG_TYPE_FRAME)
    env = c.recv()
    check(env.WhichOneof("payload") == "result" and env.result.frame_id == 5000, f"after the Error: {env}")

    # End: the worker closes the connection.
    c.send("end", pb.End(reason="interop done"), pb.MSG_TYPE_END)
    deadline = time.monotonic() + 10
    while True:
        check(time.monotonic() < deadline, "the worker did not close after End")
        env = c.recv_env()
        if env is None:
            break
        check(env.WhichOneof("payload") == "heartbeat", f"after End: {env}")
    print(f"End: the worker closed the connection ({len(c.window_updates)} WindowUpdates seen)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--gen", required=True, help="directory holding the generated frames_pb2.py")
    args = ap.parse_args()
    sys.path.insert(0, args.gen)
    import frames_pb2 as pb  # noqa: E402  (generated at test time)

    try:
        run(pb, args.addr)
    except Mismatch as e:
        print(f"MISMATCH: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("interop: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
