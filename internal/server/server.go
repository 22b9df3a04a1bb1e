// Package server is convoy's one HTTPS listener. It accepts only TLS (a
// plaintext request gets no byte back), serves HTTP/1.1 and HTTP/2, gives
// every request an ID, logs it without secrets, routes it by SigV4 signing
// service and protocol to the service that owns it, and answers what no
// service owns with an AWS-shaped error. /healthz and /metrics are served
// here too.
package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"convoy/internal/awsproto"
	"convoy/internal/tlslisten"
)

// Config configures a Server.
type Config struct {
	TLS    *tls.Config // from tlsconf
	Logger *slog.Logger
	// Registry receives convoy's metrics; nil makes a new one.
	Registry *prometheus.Registry
	// MaxHeaderBytes bounds request headers; 0 means 1 MiB.
	MaxHeaderBytes int
	// Auth authenticates every API request before it is routed; nil
	// refuses every signed request.
	Auth Authenticator
	// MaxConnections bounds the connections open at once over all of the
	// server's listeners; 0 means DefaultMaxConnections.
	MaxConnections int
}

// DefaultMaxConnections is the default connection limit: far more than the
// SDK clients of a team keep open (each pools a handful), few enough that
// a flood of idle connections cannot exhaust file descriptors or memory (an
// HTTP/2 connection may buffer 4 MiB of unread request body).
const DefaultMaxConnections = 4096

// Authenticator verifies a request's signature and returns it with the
// caller's principal in its context, or the AWS error to answer with.
type Authenticator interface {
	Authenticate(r *http.Request, service string) (*http.Request, *awsproto.Error)
	// Caller names the principal of an authenticated request, for the log.
	Caller(r *http.Request) string
}

// Server routes AWS API requests to services.
type Server struct {
	cfg      Config
	log      *slog.Logger
	http     *http.Server
	mu       sync.RWMutex
	services map[string]http.Handler
	metrics  *metrics
	slots    *tlslisten.Limit
}

// New returns a server; register services before Serve.
func New(cfg Config) *Server {
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 1 << 20
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	s := &Server{cfg: cfg, log: cfg.Logger, services: map[string]http.Handler{}, metrics: newMetrics(cfg.Registry)}
	s.metrics.connLimit.Set(float64(cfg.MaxConnections))
	// One address may hold a quarter of the slots; while every slot is
	// taken, connections that hold one without use are shed (tlslisten).
	s.slots = tlslisten.NewLimit(cfg.MaxConnections)
	s.slots.PerIP = max(cfg.MaxConnections/4, 64)
	s.slots.Open = s.metrics.openConns.Add
	s.slots.Refused = s.metrics.connsRefused.Inc
	shedder := &tlslisten.HTTPShedder{NewGrace: 5 * time.Second}
	s.slots.Shed = shedder.Shed
	var warnMu sync.Mutex
	var warned time.Time
	s.slots.Waited = func() {
		s.metrics.connsWaited.Inc()
		warnMu.Lock()
		defer warnMu.Unlock()
		if now := time.Now(); now.Sub(warned) > time.Minute { // at most once a minute
			warned = now
			s.log.Warn("connection limit reached: new connections wait in the kernel's listen queue until one closes; if the clients are legitimate, raise convoy up --max-connections",
				"max_connections", cfg.MaxConnections)
		}
	}
	metricsHandler := promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{})
	// No ServeMux: it would "clean" S3 keys such as a/../b into redirects.
	// /healthz and /metrics are the only unsigned paths; a signed request to
	// them is an API call (a bucket may be called "metrics").
	top := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && awsproto.SigningService(r) == "" {
			switch r.URL.Path {
			case "/healthz":
				w.Header().Set("Content-Type", "text/plain")
				w.Write([]byte("ok\n"))
				return
			case "/metrics":
				metricsHandler.ServeHTTP(w, r)
				return
			}
		}
		s.route(w, r)
	})
	s.http = &http.Server{
		Handler:           s.withRequestLog(top),
		TLSConfig:         cfg.TLS,
		ConnState:         shedder.ConnState,
		ReadHeaderTimeout: 15 * time.Second, // also bounds the TLS handshake
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          log.New(&httpErrorLog{s: s}, "", 0),
		// HTTP/2 flow-control windows at net/http's largest (default
		// 1 MiB): an upload over HTTP/2 (the Go SDK's S3 PUTs) waits less
		// for WINDOW_UPDATEs while the handler seals and writes; 1 GiB
		// PUTs went from 262–283 to 326 MB/s here (bench/RESULTS.md). A
		// connection buffers at most this much unread body.
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerConnection: 4<<20 - 1,
			MaxReceiveBufferPerStream:     4<<20 - 1,
		},
	}
	return s
}

// RuntimeService is the name under which to Handle the SageMaker Runtime:
// it signs as "sagemaker", like the control plane, and is told apart by its
// restJson1 paths (/endpoints/…).
const RuntimeService = "sagemaker-runtime"

// Handle registers the handler of a signing service ("s3", "iam", …) or of
// RuntimeService.
func (s *Server) Handle(service string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.services[service] = h
}

// Registry returns the metrics registry, for services to add theirs.
func (s *Server) Registry() *prometheus.Registry { return s.cfg.Registry }

// Serve accepts TLS connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(tlslisten.New(l, s.cfg.TLS, s.slots))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeWith is Serve with another TLS configuration on l: a second
// endpoint with another profile (the FIPS endpoint), serving the same API.
// Shutdown stops it too.
func (s *Server) ServeWith(l net.Listener, cfg *tls.Config) error {
	err := s.http.Serve(tlslisten.New(l, cfg, s.slots))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for in-flight requests to finish.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// route sends a request to the service that owns it.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	service, proto := awsproto.Detect(r)
	if service == "" || s.cfg.Auth == nil {
		// Anonymous requests are refused: every API call must be signed.
		code := "MissingAuthenticationToken"
		if proto == awsproto.RestXML {
			code = "AccessDenied"
		}
		awsproto.WriteError(w, r, proto, awsproto.Errorf(http.StatusForbidden, code,
			"Request is missing Authentication Token: sign it with AWS Signature Version 4 (the aws CLI and SDKs do this when credentials are configured)"))
		return
	}
	authed, aerr := s.cfg.Auth.Authenticate(r, service)
	if aerr != nil {
		awsproto.WriteError(w, r, proto, aerr)
		return
	}
	r = authed
	if info := requestInfoFrom(r.Context()); info != nil {
		info.caller = s.cfg.Auth.Caller(r)
	}
	name := service
	if service == "sagemaker" && proto == awsproto.RestJSON {
		name = RuntimeService // the runtime signs as sagemaker too
	}
	s.mu.RLock()
	h := s.services[name]
	s.mu.RUnlock()
	if h != nil {
		h.ServeHTTP(w, r)
		return
	}
	s.unknownOperation(w, r, service, proto)
}

func (s *Server) unknownOperation(w http.ResponseWriter, r *http.Request, service string, proto awsproto.Protocol) {
	switch proto {
	case awsproto.JSON:
		op := r.Header.Get("X-Amz-Target")
		awsproto.WriteError(w, r, proto, awsproto.Errorf(http.StatusBadRequest, "UnknownOperationException",
			"operation %s is not supported by this convoy", op))
	case awsproto.Query:
		r.ParseForm()
		awsproto.WriteError(w, r, proto, awsproto.Errorf(http.StatusBadRequest, "InvalidAction",
			"action %q of service %s is not supported by this convoy", r.Form.Get("Action"), service))
	case awsproto.RestJSON:
		awsproto.WriteError(w, r, proto, awsproto.Errorf(http.StatusNotFound, "UnknownOperationException",
			"%s %s is not supported by this convoy", r.Method, r.URL.Path))
	default:
		awsproto.WriteError(w, r, proto, awsproto.Errorf(http.StatusNotImplemented, "NotImplemented",
			"service %s is not supported by this convoy", service))
	}
}

// statusWriter records what a handler answered, for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// withRequestLog assigns the request ID and writes one access-log line per
// request. It logs the path but never the query string (presigned URLs carry
// signatures and session tokens there) nor any header value.
func (s *Server) withRequestLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 {
			growStack(int(r.ContentLength))
		}
		start := time.Now()
		ctx, id := awsproto.WithRequestID(r.Context())
		info := &requestInfo{}
		ctx = context.WithValue(ctx, requestInfoKey{}, info)
		service, proto := awsproto.Detect(r)
		awsproto.SetRequestIDHeaders(w.Header(), id, service)
		sw := &statusWriter{ResponseWriter: w}
		r = r.WithContext(ctx)
		func() {
			// A bug in one handler answers that request with an AWS
			// InternalFailure and is logged; it never takes the server down.
			defer func() {
				if v := recover(); v != nil {
					if v == http.ErrAbortHandler {
						panic(v)
					}
					s.log.Error("handler panic", "request_id", id, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
					s.metrics.panics.Inc()
					if sw.status == 0 {
						awsproto.WriteError(sw, r, proto, awsproto.Errorf(http.StatusInternalServerError, "InternalFailure",
							"internal error; request ID %s", id))
					}
				}
			}()
			next.ServeHTTP(sw, r)
		}()
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		elapsed := time.Since(start)
		label := service
		if label == "" {
			label = "none"
		}
		s.metrics.observe(label, sw.status, elapsed)
		if !s.log.Enabled(ctx, slog.LevelInfo) {
			return
		}
		attrs := make([]slog.Attr, 0, 14)
		attrs = append(attrs,
			slog.String("request_id", id), slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.String("service", service), slog.String("protocol", proto.String()), slog.Int("status", sw.status),
			slog.Int64("bytes", sw.bytes), slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
			slog.String("remote", r.RemoteAddr), slog.String("proto", r.Proto))
		if op := r.Header.Get("X-Amz-Target"); op != "" {
			attrs = append(attrs, slog.String("operation", op))
		}
		if info.caller != "" {
			attrs = append(attrs, slog.String("caller", info.caller))
		}
		// The handler directly, without the caller's PC that Logger would
		// look up for every line: the access log is on the hot path.
		if h := s.log.Handler(); h.Enabled(ctx, slog.LevelInfo) {
			rec := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
			rec.AddAttrs(attrs...)
			h.Handle(ctx, rec)
		}
	})
}

// growStack makes the calling goroutine's stack big enough for a whole
// request before the request starts. HTTP/2 serves every request on a new
// goroutine with the runtime's small starting stack; convoy's handler chain
// (SigV4, IAM, the service) outgrows it deep down, and growing a deep stack
// copies it frame by frame: 16 µs of 94 per GetCallerIdentity over HTTP/2
// in the profile. Growing here, where the stack holds only net/http's few
// frames, costs a fraction of that. (HTTP/1.1 reuses one goroutine per
// connection, whose stack stays grown.)
//
//go:noinline
func growStack(i int) byte {
	var pad [stackPad]byte
	pad[i&(stackPad-1)] = 1
	return pad[(i>>1)&(stackPad-1)]
}

const stackPad = 8 << 10

// requestInfo collects what the access log reports beyond the request line.
type requestInfo struct {
	caller string
}

type requestInfoKey struct{}

func requestInfoFrom(ctx context.Context) *requestInfo {
	i, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return i
}

// httpErrorLog turns net/http's log lines into structured, counted events.
type httpErrorLog struct{ s *Server }

func (l *httpErrorLog) Write(p []byte) (int, error) {
	msg := string(bytes.TrimSpace(p))
	if strings.Contains(msg, "TLS handshake error") {
		l.s.metrics.handshakeFailures.Inc()
		l.s.log.Debug("tls handshake failed", "detail", msg)
		return len(p), nil
	}
	l.s.log.Warn("http server", "detail", msg)
	return len(p), nil
}
