"""WebRTC signaling on the gateway: one exchange, in the manner of WHEP (the sessions are edge.transport.webrtc's)."""

from edge.transport.http import Request, Response


class Signaling:
    """The /webrtc route of Gateway, which supplies webrtc: (bridge, WebRTCService) or None."""

    async def _signal(self, request: Request) -> Response:
        from edge.transport.webrtc import SignalingError
        if self.webrtc is None:
            return Response.text(404, "WebRTC is off on this node; fetch over HTTP")
        bridge, service = self.webrtc
        if request.path == "/webrtc" and request.method == "POST":
            if not request.headers.get("content-type", "").startswith("application/sdp"):
                return Response.text(415, "POST the SDP offer with Content-Type: application/sdp")
            try:
                sid, answer = await bridge.call(service.answer, request.body.decode("utf-8", "replace"),
                                                request.peer)
            except SignalingError as exc:
                return Response.text(exc.status, str(exc))
            return Response(201, {"content-type": "application/sdp", "location": f"/webrtc/{sid}",
                                  "cache-control": "no-store"}, answer.encode())
        if request.path.startswith("/webrtc/") and request.method == "DELETE":
            closed = await bridge.call(service.close, request.path[len("/webrtc/"):])
            return Response(200 if closed else 404, {})
        return Response.text(405, "POST an SDP offer to /webrtc; DELETE /webrtc/ID ends a session",
                             {"allow": "POST, DELETE"})
