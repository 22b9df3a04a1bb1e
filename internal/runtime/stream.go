package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"

	"convoy/internal/awsproto"
)

// InvokeEndpointWithResponseStream answers with an AWS event stream
// (application/vnd.amazon.eventstream): every piece of the container's
// response body, as it arrives, becomes a PayloadPart event, flushed at
// once; a container that breaks off ends the stream with a ModelStreamError
// event (StreamBroken, or ModelInvocationTimeExceeded when it ran out of
// time). The framing is the AWS SDK's own encoder.

// streamChunk bounds one PayloadPart: what one read of the container's
// response returns, at most.
const streamChunk = 64 << 10

var streamEncoder = eventstream.NewEncoder()

// errStreamed is a failure already told in the stream: counted as a model
// error, not written again.
var errStreamed = &awsproto.Error{Code: "ModelStreamError", Status: http.StatusOK}

func stringHeaders(kv ...string) eventstream.Headers {
	var hs eventstream.Headers
	for i := 0; i+1 < len(kv); i += 2 {
		hs.Set(kv[i], eventstream.StringValue(kv[i+1]))
	}
	return hs
}

// writeStream relays resp as events. The status line is out when it
// starts, so what goes wrong later is told in the stream.
func (r *Router) writeStream(ctx context.Context, w http.ResponseWriter, resp *http.Response, t *table, v *variant, in *instance) *awsproto.Error {
	h := w.Header()
	h.Set("Content-Type", "application/vnd.amazon.eventstream")
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		h.Set(hdrStreamContentType, ct)
	}
	copyCustomAttributes(h, resp.Header)
	h.Set(hdrInvokedVariant, v.name)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	buf := make([]byte, streamChunk)
	part := stringHeaders(":event-type", "PayloadPart", ":content-type", "application/octet-stream", ":message-type", "event")
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if werr := streamEncoder.Encode(w, eventstream.Message{Headers: part, Payload: buf[:n]}); werr != nil {
				panic(http.ErrAbortHandler) // the client is gone
			}
			rc.Flush()
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			code, msg := "StreamBroken", "The connection to container primary broke off while it was streaming its response: "+err.Error()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				code, msg = "ModelInvocationTimeExceeded", "Container primary did not finish streaming its response within "+r.cfg.Timeout.String()
			}
			r.log.Warn("invocation stream broken", "endpoint", t.name, "variant", v.name, "instance", in.id, "err", err)
			payload, _ := json.Marshal(map[string]string{"Message": msg, "ErrorCode": code})
			streamEncoder.Encode(w, eventstream.Message{Payload: payload, Headers: stringHeaders(
				":exception-type", "ModelStreamError", ":content-type", "application/json", ":message-type", "exception")})
			rc.Flush()
			return errStreamed
		}
	}
}
