package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// MaxPayload is the largest request body InvokeEndpoint accepts: 6 MB.
const MaxPayload = 6 * 1024 * 1024

// The request headers of the SageMaker Runtime model (sagemaker-runtime
// 2017-05-13) that convoy passes to the container; SageMaker strips all
// others.
const (
	hdrCustomAttributes = "X-Amzn-Sagemaker-Custom-Attributes"
	hdrTargetVariant    = "X-Amzn-Sagemaker-Target-Variant"
	hdrTargetModel      = "X-Amzn-Sagemaker-Target-Model"
	hdrInferenceID      = "X-Amzn-Sagemaker-Inference-Id"
	// InvokeEndpointWithResponseStream's Accept and response Content-Type.
	hdrStreamAccept      = "X-Amzn-Sagemaker-Accept"
	hdrStreamContentType = "X-Amzn-Sagemaker-Content-Type"
	// hdrInvokedVariant is the response header naming the variant (the
	// model spells it x-Amzn-Invoked-Production-Variant; names are
	// case-insensitive).
	hdrInvokedVariant = "X-Amzn-Invoked-Production-Variant"
)

// maxOriginalMessage bounds how much of a container's error body a
// ModelError quotes.
const maxOriginalMessage = 4096

var (
	endpointNameRE = regexp.MustCompile(`^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$`)
	variantNameRE  = endpointNameRE
	// inferenceIDRE is the model's InferenceId: printable, not starting
	// with a space, at most 64 characters.
	inferenceIDRE = regexp.MustCompile(`^[!-~][ -~]{0,63}$`)
)

// parsePath splits /endpoints/{EndpointName}/{op} where op is
// "invocations" or "invocations-response-stream".
func parsePath(p string) (name, op string, ok bool) {
	rest, found := strings.CutPrefix(p, "/endpoints/")
	if !found {
		return "", "", false
	}
	name, op, found = strings.Cut(rest, "/")
	if !found || name == "" || (op != "invocations" && op != "invocations-response-stream") {
		return "", "", false
	}
	return name, op, true
}

// visibleASCII reports whether s is at most max visible US-ASCII characters
// (and spaces and tabs between them), as CustomAttributes must be.
func visibleASCII(s string, max int) bool {
	if len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 || c > 0x7e) && c != '\t' {
			return false
		}
	}
	return true
}

// copyCustomAttributes passes the container's CustomAttributes to the
// caller when they are what the API allows (at most 1024 visible US-ASCII
// characters); a container cannot put more into convoy's answer.
func copyCustomAttributes(to, from http.Header) {
	if a := from.Get(hdrCustomAttributes); a != "" && visibleASCII(a, 1024) {
		to.Set(hdrCustomAttributes, a)
	}
}

func validationError(format string, args ...any) *awsproto.Error {
	return awsproto.Errorf(http.StatusBadRequest, "ValidationError", format, args...)
}

// ServeHTTP serves InvokeEndpoint. It is registered for the runtime's
// restJson1 paths, after SigV4 authentication.
func (r *Router) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if err := r.invoke(w, req); err != nil && err != errStreamed {
		awsproto.WriteError(w, req, awsproto.RestJSON, err)
	}
}

// invoke returns the error to answer with, or nil once it has answered.
func (r *Router) invoke(w http.ResponseWriter, req *http.Request) *awsproto.Error {
	name, op, ok := parsePath(req.URL.Path)
	if !ok || req.Method != http.MethodPost {
		return awsproto.Errorf(http.StatusNotFound, "UnknownOperationException",
			"%s %s is not a SageMaker Runtime operation; InvokeEndpoint is POST /endpoints/{EndpointName}/invocations", req.Method, req.URL.Path)
	}
	if !endpointNameRE.MatchString(name) {
		r.metrics.reject("bad_request")
		return validationError("1 validation error detected: Value '%s' at 'endpointName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name)
	}
	ctx := req.Context()
	if err := r.cfg.IAM.Authorize(ctx, iam.PrincipalFrom(ctx), "sagemaker:InvokeEndpoint", r.endpointARN(name), nil); err != nil {
		r.metrics.reject("access_denied")
		var ae *awsproto.Error
		if errors.As(err, &ae) {
			return ae
		}
		r.log.Error("authorize invocation", "endpoint", name, "err", err)
		return awsproto.Errorf(http.StatusInternalServerError, "InternalFailure", "internal error; request ID %s", awsproto.RequestID(ctx))
	}
	stream := op == "invocations-response-stream"
	if req.ContentLength > MaxPayload {
		r.metrics.reject("too_large")
		return validationError("Request payload of %d bytes exceeds the InvokeEndpoint maximum of %d bytes (6 MB); send a smaller body", req.ContentLength, MaxPayload)
	}
	attrs := req.Header.Get(hdrCustomAttributes)
	if !visibleASCII(attrs, 1024) {
		r.metrics.reject("bad_request")
		return validationError("CustomAttributes must be at most 1024 visible US-ASCII characters")
	}
	if tm := req.Header.Get(hdrTargetModel); !visibleASCII(tm, 1024) {
		r.metrics.reject("bad_request")
		return validationError("TargetModel must be at most 1024 visible US-ASCII characters")
	}
	if id := req.Header.Get(hdrInferenceID); id != "" && !inferenceIDRE.MatchString(id) {
		r.metrics.reject("bad_request")
		return validationError("1 validation error detected: Value at 'inferenceId' failed to satisfy constraint: Member must be 1 to 64 printable characters, not starting with a space")
	}

	t := r.acquire(name)
	if t == nil {
		r.metrics.reject("not_found")
		return validationError("Endpoint %s of account %s not found.", name, r.cfg.Account)
	}
	defer t.release()
	if len(t.variants) == 0 {
		r.metrics.reject("not_in_service")
		return validationError("Endpoint %s of account %s is not in service: its status is %s. Wait until it is InService (aws sagemaker wait endpoint-in-service --endpoint-name %s).",
			t.name, r.cfg.Account, t.status, t.name)
	}
	var v *variant
	if target := req.Header.Get(hdrTargetVariant); target != "" {
		if v = t.variant(target); v == nil || !variantNameRE.MatchString(target) {
			r.metrics.reject("bad_request")
			return validationError("Variant %s not found for endpoint %s of account %s.", target, t.name, r.cfg.Account)
		}
	} else if v = t.pick(random()); v == nil {
		r.metrics.reject("unavailable")
		return awsproto.Errorf(http.StatusServiceUnavailable, "ServiceUnavailable",
			"Endpoint %s has no variant with a positive weight and a healthy instance; retry, or name a variant with TargetVariant", t.name)
	}
	in := v.instance()
	if in == nil {
		v.m.unavailable.Inc()
		return awsproto.Errorf(http.StatusServiceUnavailable, "ServiceUnavailable",
			"Variant %s of endpoint %s has no healthy instance at the moment; retry later", v.name, t.name)
	}

	body, err := readBody(req)
	if err != nil {
		return err
	}
	defer body.free()
	in.inflight.Add(1)
	defer in.inflight.Add(-1)
	start := time.Now()
	aerr := r.forward(w, req, t, v, in, body.b, stream)
	v.m.latency.Observe(time.Since(start).Seconds())
	if aerr != nil {
		if aerr.Code == "ModelError" || aerr == errStreamed {
			v.m.modelError.Inc()
		}
		return aerr
	}
	v.m.ok.Inc()
	return nil
}

// buffer is a pooled request body.
type buffer struct {
	b    []byte
	pool *[]byte
}

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func (b buffer) free() {
	if b.pool != nil && cap(*b.pool) <= 8<<20 {
		*b.pool = b.b[:0]
		bodyPool.Put(b.pool)
	}
}

// readBody returns the request body in memory, so that a request can be
// sent again when a kept-alive connection turns out to be closed: the
// buffer SigV4 verification read it into to hash it, or a copy, refusing
// one larger than MaxPayload whatever Content-Length said.
func readBody(req *http.Request) (buffer, *awsproto.Error) {
	if b, ok := req.Body.(interface{ Bytes() []byte }); ok && len(b.Bytes()) <= MaxPayload {
		return buffer{b: b.Bytes()}, nil // sigv4 read it whole to hash it
	}
	p := bodyPool.Get().(*[]byte)
	buf := bytes.NewBuffer((*p)[:0])
	if n := req.ContentLength; n > 0 {
		buf.Grow(int(n) + bytes.MinRead) // room to read io.EOF without growing
	}
	if req.Body != nil {
		if _, err := buf.ReadFrom(io.LimitReader(req.Body, MaxPayload+1)); err != nil {
			bodyPool.Put(p)
			return buffer{}, validationError("read the request body: %v", err)
		}
	}
	if buf.Len() > MaxPayload {
		bodyPool.Put(p)
		return buffer{}, validationError("Request payload exceeds the InvokeEndpoint maximum of %d bytes (6 MB); send a smaller body", MaxPayload)
	}
	return buffer{b: buf.Bytes(), pool: p}, nil
}

// forward sends the invocation to in and writes the container's answer, or
// returns the error to answer with.
func (r *Router) forward(w http.ResponseWriter, req *http.Request, t *table, v *variant, in *instance, body []byte, stream bool) *awsproto.Error {
	ctx, cancel := context.WithTimeout(req.Context(), r.cfg.Timeout)
	defer cancel()
	var resp *http.Response
	var err error
	for attempt := 0; ; attempt++ {
		var reused bool
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
		out, nerr := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodPost, in.url, bytes.NewReader(body))
		if nerr != nil {
			return awsproto.Errorf(http.StatusInternalServerError, "InternalFailure", "build the container request: %v", nerr)
		}
		h := out.Header
		for _, k := range []string{"Content-Type", "Accept", hdrCustomAttributes, hdrTargetModel, hdrInferenceID} {
			if val := req.Header.Get(k); val != "" {
				h[k] = []string{val}
			}
		}
		if stream {
			// The streaming operation's Accept travels in its own header.
			delete(h, "Accept")
			if val := req.Header.Get(hdrStreamAccept); val != "" {
				h["Accept"] = []string{val}
			}
		}
		resp, err = in.pool.RoundTrip(out) // no redirects to follow, no cookies
		// A kept-alive connection the container closed just as it was
		// reused fails before any answer; the container never read the
		// request. Go's transport retries that only for idempotent
		// methods, so the router does it, once, on a new connection.
		if err != nil && reused && attempt == 0 && ctx.Err() == nil {
			continue
		}
		break
	}
	if err != nil {
		if ctx.Err() != nil && req.Context().Err() == nil {
			return r.modelError(t, v, in, 0, "", fmt.Sprintf("Your invocation timed out while waiting for a response from container primary (%s). Check the container's log and latency, and try again.", r.cfg.Timeout))
		}
		if req.Context().Err() != nil {
			return awsproto.Errorf(499, "RequestCanceled", "the client went away")
		}
		return r.modelError(t, v, in, 0, "", fmt.Sprintf("An exception occurred while sending the request to container primary: %v", err))
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxOriginalMessage))
		return r.modelError(t, v, in, resp.StatusCode, strings.ToValidUTF8(string(msg), "\uFFFD"), "")
	}
	if stream {
		return r.writeStream(ctx, w, resp, t, v, in)
	}
	h := w.Header()
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		h.Set("Content-Type", ct)
	}
	copyCustomAttributes(h, resp.Header)
	h.Set(hdrInvokedVariant, v.name)
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, resp.Body); err != nil {
		// Headers are out: all that is left is to cut the response short,
		// which the client sees as a broken body, not a success.
		r.log.Warn("invocation response cut short", "endpoint", t.name, "variant", v.name, "instance", in.id, "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// modelError is SageMaker's ModelError: the container answered status (4xx
// or 5xx) with original, or (status 0) did not answer; why says so.
func (r *Router) modelError(t *table, v *variant, in *instance, status int, original, why string) *awsproto.Error {
	kind := "server"
	if status >= 400 && status < 500 {
		kind = "client"
	}
	msg := why
	if msg == "" {
		msg = fmt.Sprintf("Received %s error (%d) from primary with message %q", kind, status, original)
	}
	msg += fmt.Sprintf(". See log stream %s/%s of log group %s (aws logs get-log-events) in account %s for more information.",
		v.name, in.id, LogGroup(t.name), r.cfg.Account)
	fields := map[string]any{"LogStreamArn": in.stream}
	if status != 0 {
		fields["OriginalStatusCode"] = status
		fields["OriginalMessage"] = original
	}
	if !utf8.ValidString(msg) {
		msg = strings.ToValidUTF8(msg, "\uFFFD")
	}
	return &awsproto.Error{Code: "ModelError", Message: msg, Status: http.StatusFailedDependency, Fields: fields}
}
