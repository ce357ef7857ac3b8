"""Admission control for an inbound INVITE: route it, check its codecs, check capacity.

Pure Python, so every rejection path is unit-tested without a SIP stack. The order matters to
callers: a wrong number is a 404 even when the server is busy, a codec mismatch a 488. The
cluster-wide cap is asked last, and only for an INVITE that would otherwise be answered: it
takes a slot (`LiveState.reserve`), which a rejected INVITE must not hold.

Draining comes before all of them: a node that is going away answers every new INVITE 503
with Retry-After, even one to an unknown number or with codecs it refuses. A 503 tells the
caller's proxy to try another node (RFC 3261 21.5.4) where a 404 or 488 is final; a leaving
node should not give a final answer from a routing table that its successor (a new release,
new routes) may no longer share, and a draining node takes no cluster slot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.sip.routes import RouteTable, request_uri_user
from app.sip.sdp import SipRequest, offered_audio_codecs


@dataclass(frozen=True, slots=True)
class Decision:
    """Accept (status 200, with the dialplan) or reject with a SIP status and reason."""

    status: int
    reason: str
    dialled: str = ""
    dialplan: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status == 200


class Admission:
    """Decides on INVITEs. `active_calls` is asked at decision time (this node's capacity);
    `reserve`, when given, is then asked with the INVITE's Call-ID to take a slot of the
    cluster-wide cap (False: the cluster is full). A slot taken for an INVITE that is then not
    answered is given back by the call's `CallEnded` (or `LiveState.release`)."""

    def __init__(
        self,
        routes: RouteTable,
        codecs: Sequence[str],
        max_calls: int,
        active_calls: Callable[[], int],
        retry_after_s: int = 30,
        reserve: Callable[[str], bool] | None = None,
    ) -> None:
        self._routes = routes
        self._codecs = {codec.upper() for codec in codecs}
        self._max_calls = max_calls
        self._active_calls = active_calls
        self._retry_after_s = retry_after_s
        self._reserve = reserve
        self._draining = threading.Event()  # set from the main thread, read on the SIP loop

    def drain(self) -> None:
        """Refuse every new INVITE from now on (503 with Retry-After). Any thread; for good."""
        self._draining.set()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def decide(self, request: SipRequest) -> Decision:
        if request.method != "INVITE":
            return Decision(405, "Method Not Allowed")
        if self._draining.is_set():  # first: see the module docstring
            return self._busy(_dialled_or_empty(request.request_uri))
        try:
            dialled = request_uri_user(request.request_uri)
        except ValueError:
            return Decision(404, "Not Found")
        dialplan = self._routes.lookup(dialled)
        if dialplan is None:
            return Decision(404, "Not Found", dialled)
        offered = offered_audio_codecs(request.body)
        if offered is not None and not self._codecs.intersection(offered):
            return Decision(488, "Not Acceptable Here", dialled)
        if self._active_calls() >= self._max_calls:
            return self._busy(dialled)
        if self._reserve is not None:
            call_id = request.headers.get("call-id", "")
            if not call_id:  # RFC 3261 requires it; a slot must be keyed by the call it is for
                return Decision(400, "Bad Request", dialled)
            if not self._reserve(call_id):
                return self._busy(dialled)
        return Decision(200, "OK", dialled, dialplan)

    def _busy(self, dialled: str) -> Decision:
        retry = (("Retry-After", str(self._retry_after_s)),)
        return Decision(503, "Service Unavailable", dialled, headers=retry)


def _dialled_or_empty(request_uri: str) -> str:
    """The dialled number for the record of a refused call ("" when there is none)."""
    try:
        return request_uri_user(request_uri)
    except ValueError:
        return ""
