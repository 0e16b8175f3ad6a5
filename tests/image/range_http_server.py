#!/usr/bin/env python3
"""A static file server that answers HTTP range requests, for tests/image_update.sh.

RAUC's HTTP streaming (rauc 1.8 src/nbd.c, the streaming helper) reads a bundle over HTTP in
pieces: `Range: bytes=FIRST-LAST` requests answered with `206 Partial Content` and a
`Content-Range: bytes FIRST-LAST/SIZE` header (RFC 7233 sections 2.1, 4.1); a server that
answers 200 with the whole file is refused. Python's http.server has no range support, so this
adds exactly that, for single ranges (all RAUC asks for). It logs each request's range and the
bytes sent, so the test can show the bundle was read in pieces and not downloaded first.

    range_http_server.py DIRECTORY PORT
"""
import http.server
import os
import re
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404, "no such bundle")
            return None
        size = os.path.getsize(path)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        first, last = 0, size - 1
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                first = int(match.group(1))
                last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # a suffix range: the last N bytes (RFC 7233 2.1)
                first = max(size - int(match.group(2)), 0)
            if first > last or first >= size:
                # RFC 7233 4.4: 416 with the complete length.
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        f = open(path, "rb")
        f.seek(first)
        self.range_left = last - first + 1
        return f

    def copyfile(self, source, outputfile):
        left = self.range_left
        while left > 0:
            chunk = source.read(min(left, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            left -= len(chunk)
        sys.stdout.write(f"sent {self.range_left - left} bytes for {self.headers.get('Range', 'the whole file')}\n")
        sys.stdout.flush()

    def log_message(self, format, *args):
        sys.stdout.write("request " + (format % args) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    directory, port = sys.argv[1], int(sys.argv[2])
    handler = lambda *a, **kw: Handler(*a, directory=directory, **kw)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
