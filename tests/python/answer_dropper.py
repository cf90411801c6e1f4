"""A TCP relay on 127.0.0.1 in front of an optd server that can lose the answer of one call
after the server has acted on it: the network failure after which a call's outcome is unknown.

The relay forwards both directions unchanged. Once armed (drop_next_answer()), it reads the
server's HTTP/2 frames (9-byte header: 24-bit length, type, flags, stream id) and, at the first
DATA frame of a call (type 0, stream id > 0), closes both sockets without forwarding it. optd
sends a call's first DATA frame, its first response message, only after it acted on the request
(a step's weights come after the step was applied; an upload's, delete's or save's answer after
the work was done), so the client sees the connection fail (UNAVAILABLE) for a call the server
completed. Then it disarms itself; later connections are relayed whole.

Thread safety: drop_next_answer(), dropped and close() may be called from any thread."""

import socket
import threading

_DATA = 0
_HEADER = 9


class AnswerDropper:
    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._armed = False
        self._dropped = 0
        self._sockets = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_next_answer(self):
        with self._lock:
            self._armed = True

    @property
    def dropped(self):
        """Answers dropped so far."""
        with self._lock:
            return self._dropped

    def close(self):
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for s in sockets:
            _close(s)

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                _close(client)
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    _close(client)
                    _close(server)
                    return
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)

    def _answers(self, server, client):
        """Server to client, frame by frame, dropping the first call DATA frame when armed."""
        buf = b""
        try:
            while True:
                data = server.recv(1 << 16)
                if not data:
                    break
                buf += data
                out = b""
                while len(buf) >= _HEADER:
                    length = int.from_bytes(buf[0:3], "big")
                    if len(buf) < _HEADER + length:
                        break
                    frame, buf = buf[:_HEADER + length], buf[_HEADER + length:]
                    stream = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
                    if frame[3] == _DATA and stream > 0:
                        with self._lock:
                            drop, self._armed = self._armed, False
                            if drop:
                                self._dropped += 1
                        if drop:
                            client.sendall(out)
                            raise ConnectionAbortedError("answer dropped")
                    out += frame
                if out:
                    client.sendall(out)
        except OSError:
            pass
        _close(server)
        _close(client)


def _close(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
