// Package awsproto holds what every AWS wire protocol convoy speaks has in
// common: telling the protocol of a request, request IDs, and the one writer
// of AWS-shaped errors. SDKs branch on the error code and parse the body
// against the protocol's error shape, so an error in the wrong shape reaches
// the user as "UnknownError"; every handler in convoy writes errors here.
//
// Written by hand: the AWS SDKs contain only the client half of these
// protocols.
package awsproto

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"strings"
)

// Protocol is an AWS wire protocol.
type Protocol int

const (
	// RestXML is S3's protocol.
	RestXML Protocol = iota
	// Query is IAM's and STS's form-encoded protocol.
	Query
	// JSON is awsJson1_1 (X-Amz-Target), used by KMS and SageMaker.
	JSON
	// RestJSON is used by the SageMaker runtime.
	RestJSON
)

func (p Protocol) String() string {
	switch p {
	case Query:
		return "query"
	case JSON:
		return "json"
	case RestJSON:
		return "rest-json"
	}
	return "rest-xml"
}

// Error is an AWS error: the code SDKs branch on, a message for people, and
// the HTTP status.
type Error struct {
	Code    string
	Message string
	Status  int
	// Fields are further members of the error's shape (ModelError's
	// OriginalStatusCode, …), added to JSON error bodies; the XML protocols
	// have no place for them.
	Fields map[string]any
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an Error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Status: status}
}

type ctxKey struct{}

// WithRequestID stores a new request ID in the context and returns it.
//
// The ID is a random UUID (version 4) as on AWS. It names a request in logs
// and is no secret, so its bits come from math/rand/v2 (the runtime's
// per-thread ChaCha8, seeded by the kernel) rather than crypto/rand: a
// getrandom system call per request cost more than the rest of the ID and,
// on HTTP/2's fresh per-stream goroutines, a stack growth.
func WithRequestID(ctx context.Context) (context.Context, string) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], mrand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], mrand.Uint64())
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	var h [36]byte
	hex.Encode(h[0:8], b[0:4])
	hex.Encode(h[9:13], b[4:6])
	hex.Encode(h[14:18], b[6:8])
	hex.Encode(h[19:23], b[8:10])
	hex.Encode(h[24:], b[10:])
	h[8], h[13], h[18], h[23] = '-', '-', '-', '-'
	id := string(h[:])
	return context.WithValue(ctx, ctxKey{}, id), id
}

// RequestID returns the request ID of ctx ("" if none).
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// SetRequestIDHeaders writes the request-ID headers the SDKs look for in
// an answer of service: S3 answers with x-amz-request-id and x-amz-id-2,
// every other service with x-amzn-RequestId. A request no service can be
// told for (unsigned, unknown) gets all three.
func SetRequestIDHeaders(h http.Header, id, service string) {
	if service != "s3" {
		h["X-Amzn-Requestid"] = []string{id}
	}
	if service == "s3" || service == "" {
		h["X-Amz-Request-Id"] = []string{id}
		h["X-Amz-Id-2"] = []string{id}
	}
}

// WriteError writes err in the shape of protocol p.
func WriteError(w http.ResponseWriter, r *http.Request, p Protocol, err *Error) {
	id := RequestID(r.Context())
	status := err.Status
	if status == 0 {
		status = http.StatusBadRequest
	}
	h := w.Header()
	switch p {
	case JSON, RestJSON:
		code := err.Code
		if code == "AccessDenied" {
			code = "AccessDeniedException" // the JSON services' name for it
		}
		ct := "application/x-amz-json-1.1"
		if p == RestJSON {
			ct = "application/json"
		}
		h.Set("Content-Type", ct)
		h.Set("x-amzn-ErrorType", code)
		m := make(map[string]any, 2+len(err.Fields))
		for k, v := range err.Fields {
			m[k] = v
		}
		m["__type"], m["message"] = code, err.Message
		body, _ := json.Marshal(m)
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(status)
		w.Write(body)
	case Query:
		// No <Errors> wrapper: the Go SDK reads that shape as UnknownError.
		typ := "Sender"
		if status >= 500 {
			typ = "Receiver"
		}
		body := xmlDoc(queryError{Type: typ, Code: err.Code, Message: err.Message, RequestID: id})
		h.Set("Content-Type", "text/xml")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(status)
		w.Write(body)
	default:
		body := xmlDoc(s3Error{Code: err.Code, Message: err.Message, Resource: r.URL.Path, RequestID: id})
		h.Set("Content-Type", "application/xml")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(status)
		if r.Method != http.MethodHead {
			w.Write(body)
		}
	}
}

type queryError struct {
	XMLName   xml.Name `xml:"ErrorResponse"`
	Type      string   `xml:"Error>Type"`
	Code      string   `xml:"Error>Code"`
	Message   string   `xml:"Error>Message"`
	RequestID string   `xml:"RequestId"`
}

type s3Error struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource"`
	RequestID string   `xml:"RequestId"`
}

func xmlDoc(v any) []byte {
	out, err := xml.Marshal(v)
	if err != nil {
		panic(err) // the types above always marshal
	}
	return append([]byte(xml.Header), out...)
}

// Detect tells the protocol and the signing service of a request from its
// SigV4 credential scope, X-Amz-Target, path and form.
func Detect(r *http.Request) (service string, p Protocol) {
	service = SigningService(r)
	target := r.Header.Get("X-Amz-Target")
	switch {
	case target != "":
		if service == "" {
			switch {
			case strings.HasPrefix(target, "TrentService."):
				service = "kms"
			case strings.HasPrefix(target, "SageMaker."):
				service = "sagemaker"
			}
		}
		return service, JSON
	case service == "s3":
		return service, RestXML
	case service == "sagemaker" && strings.HasPrefix(r.URL.Path, "/endpoints/"):
		return service, RestJSON
	case service == "iam" || service == "sts":
		return service, Query
	case service == "" && r.Method == http.MethodPost && r.URL.Path == "/" &&
		strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded"):
		return service, Query
	case service == "" && r.URL.Query().Get("Action") != "":
		return service, Query
	}
	return service, RestXML
}

// SigningService returns the service of the request's SigV4 credential
// scope, from the Authorization header or a presigned URL, or "".
func SigningService(r *http.Request) string {
	cred := ""
	if auth := r.Header.Get("Authorization"); strings.HasPrefix(auth, "AWS4-HMAC-SHA256 ") {
		for _, part := range strings.Split(auth[len("AWS4-HMAC-SHA256 "):], ",") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(part), "Credential="); ok {
				cred = v
			}
		}
	} else {
		cred = r.URL.Query().Get("X-Amz-Credential")
	}
	// AKID/date/region/service/aws4_request
	parts := strings.Split(cred, "/")
	if len(parts) == 5 {
		return parts[3]
	}
	return ""
}
