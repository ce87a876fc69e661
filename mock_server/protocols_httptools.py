"""The httptools (llhttp) protocol: h11's answers, at a fraction of its CPU per request.

llhttp and h11 refuse different inputs. Where llhttp is stricter (obs-fold, bare LF, control
characters in values, a duplicate Content-Length, Content-Length with Transfer-Encoding,
HTTP/1.2+) the request gets the 400 envelope here where h11 would have let it through.
Where it is laxer, this class makes h11's checks itself: a missing or repeated Host, a
Transfer-Encoding other than ``chunked``, HTTP/0.9 and 2.0 request lines, targets that are
not a path (absolute-form, ``*``, CONNECT's authority-form), and a request head over
MAX_REQUEST_HEAD (llhttp has no size limit); it strips trailing whitespace from header
values as h11 does. llhttp only knows a fixed list of methods while h11 passes any token
to the app, whose middleware answers 501: such a request line is parsed as a GET and the
app gets the real method, so the 501 (and its metric) come from one place. (Only for a
request that starts a read, as every non-pipelined one does, with a line up to 8 KiB;
otherwise such a request gets 400.)
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mock_server.protocols import MALFORMED, MAX_REQUEST_HEAD, Bounds

#: A request line whose method llhttp does not know: leading empty lines, the method (an
#: RFC 9110 token), then " target HTTP/1.x" and CRLF.
_UNKNOWN_METHOD_LINE = re.compile(
    rb"(?:\r\n)*([!#$%&'*+.^_`|~0-9A-Za-z-]+)( [\x21-\x7e]+ HTTP/1\.[01]\r\n)")
#: What may still become such a line (anything else is refused without waiting for more).
#: Checked on each read, so bounded: an unknown method's request line may be up to
#: _RELAY_MAX bytes long to get h11's 501 (a longer one gets 400).
_RELAY_MAX = 8192
_UNKNOWN_METHOD_START = re.compile(
    rb"(?:\r\n)*[!#$%&'*+.^_`|~0-9A-Za-z-]*(?: [\x21-\x7e]*(?: [HTP/0-9.]*\r?)?)?")

#: httptools.parse_url (which uvicorn calls) refuses longer targets; MAX_REQUEST_HEAD allows
#: them (a query string the API describes can be ~192 KiB).
_PARSE_URL_MAX = 65535


class Refusal(Exception):
    """Raised in a parser callback: answer 400 with this message and close."""


class BoundedHttpToolsProtocol(Bounds, HttpToolsProtocol):
    _in_head = False  # between the first byte of a request and the end of its head
    _head_bytes = 0  # bytes received while in a head (bounded by MAX_REQUEST_HEAD)
    _idle = True  # no request in progress: the next byte starts one
    _begun = 0  # requests begun in the current data_received
    _start: list[bytes] | None = None  # data since a request began, until its method ends
    _relay: bytearray | None = None  # a request with a method llhttp does not know
    _method: str | None = None  # the method llhttp parsed as GET
    _stopped = False  # a non-WebSocket upgrade: llhttp parses no more

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with every parser error answered by the envelope
        self._data_in()
        self._unset_keepalive_if_required()
        if self._stopped:
            return
        if self._relay is not None:
            self._relay += data
            self._relay_unknown_method()
            return
        was_idle, self._begun = self._idle, 0
        if was_idle:  # a request starts at data[0] (after empty lines, if any)
            self._start = [data]
        elif self._start is not None:  # its method is still incomplete
            self._start.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
            return
        except httptools.HttpParserInvalidMethodError:
            if self._start is not None and self._begun == (1 if was_idle else 0):
                self._relay = bytearray(b"".join(self._start))
                self._start = None
                self._relay_unknown_method()
            else:  # a pipelined request (its start is not kept)
                self._bad_request()
            return
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            self._bad_request(str(refusal) if isinstance(refusal, Refusal) else
                              "invalid HTTP request: malformed request line or headers")
            return
        except httptools.HttpParserError as exc:
            if "Transfer-Encoding can't be present with Content-Length" in str(exc):
                # the middleware's answer under h11, which lets it through
                self._bad_request("Content-Length together with Transfer-Encoding is "
                                  "refused (RFC 9112 section 6.1); send one of them")
            else:
                self._bad_request()
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_REQUEST_HEAD:
                self._bad_request()

    def _new_parser(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        # as uvicorn does: answer a request even if more data follows Connection: close
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

    def _relay_unknown_method(self) -> None:
        """Parse a request whose method llhttp refused as a GET, giving the app its method
        (h11 passes any token; the middleware answers 501), once its line is complete."""
        buf = self._relay
        assert buf is not None
        if b"\n" not in buf:
            if len(buf) > _RELAY_MAX or not _UNKNOWN_METHOD_START.fullmatch(buf):
                self._relay = None
                self._bad_request()
            return  # the rest of the line is on its way (the head timer runs)
        self._relay = None
        line = _UNKNOWN_METHOD_LINE.match(buf)
        if line is None:
            self._bad_request()
            return
        self._method = line.group(1).decode("ascii")
        self._new_parser()
        self._idle = True
        self.data_received(b"GET" + bytes(buf[line.start(2):]))

    def _upgrade(self) -> None:
        if self._should_upgrade():
            self.handle_websocket_upgrade()
            return
        # another protocol (h2c, ...), which this server does not speak: llhttp has stopped
        # at the end of the request, which is answered; then the connection closes
        self._stopped = True
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        else:
            cycle.keep_alive = False
            # and the answer says so: older uvicorn (0.36) adds Connection: close to it only
            # when the request has one
            cycle.scope["headers"].append((b"connection", b"close"))

    # parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._idle = False
        self._begun += 1

    def on_url(self, url: bytes) -> None:
        self._start = None  # the method is known
        super().on_url(url)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._check_head()
        url = self.url
        if len(url) > _PARSE_URL_MAX:
            self.url = b"/"  # uvicorn's parse_url would fail; the target is split below
        super().on_headers_complete()
        if len(url) > _PARSE_URL_MAX:
            self.url = url
            raw_path, _, query = url.partition(b"#")[0].partition(b"?")
            path = raw_path.decode("ascii")
            self.scope["path"] = self.root_path + (unquote(path) if "%" in path else path)
            self.scope["raw_path"] = self.root_path.encode("ascii") + raw_path
            self.scope["query_string"] = query
        if self._method is not None:
            self.scope["method"] = self._method
            self._method = None
        self._head_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._idle = True

    def _check_head(self) -> None:
        """What h11 refuses and llhttp lets through; header values trimmed as h11 does."""
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise Refusal(f"HTTP version {version} is not supported; send 1.1")
        hosts = 0
        codings = []
        headers = self.headers
        size = len(self.url)
        for i, (name, value) in enumerate(headers):
            size += len(name) + len(value)
            if value[-1:] in (b" ", b"\t"):  # h11 strips trailing whitespace, llhttp does not
                headers[i] = (name, value.rstrip(b" \t"))
            if name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                codings.append(value)
        if size > MAX_REQUEST_HEAD:  # all of it came at once (data_received counts the rest)
            raise Refusal(MALFORMED)
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise Refusal("a request needs exactly one Host header (RFC 9112 section 3.2)")
        if codings and (len(codings) > 1 or codings[0].strip().lower() != b"chunked"):
            raise Refusal("only Transfer-Encoding: chunked is supported")
        if not self.url.startswith(b"/"):
            raise Refusal("the request target must be a path starting with / (origin-form)")

    def handle_websocket_upgrade(self) -> None:
        self._ws_upgrade()
        super().handle_websocket_upgrade()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._response_done()

    def shutdown(self) -> None:
        if not self._shutdown_idle():
            super().shutdown()

    def send_400_response(self, msg: str) -> None:
        self._bad_request()
