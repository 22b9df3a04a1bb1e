// Package credsvc serves job containers their role's credentials over the
// container credentials protocol of ECS and SageMaker. A runner registers a
// job's role and gets a relative URI; the container gets
// AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=<uri>, and every AWS SDK and CLI in
// it fetches short-lived credentials from http://169.254.170.2<uri>, and
// fetches new ones before they expire. Nothing long-lived sits in the
// container's environment (/proc/<pid>/environ) or outlives the job: the
// runner revokes the URI when the job ends, and with it every credential
// the URI handed out (sts.Service.RevokeCredentials).
//
// Written by hand: the protocol's server side — one GET answering one JSON
// object — exists only inside the ECS agent; the SDKs carry clients only.
//
// The server speaks plain HTTP on a loopback listener of convoy's process,
// which the executor DNATs from 169.254.170.2:80 of each job's network
// (executor.JobSpec.Credentials). Plain HTTP is deliberate: ECS and
// SageMaker serve this endpoint over http on 169.254.170.2 too, and boto3
// verifies an https container endpoint against certifi's roots only (it
// ignores AWS_CA_BUNDLE), so convoy's private CA would break it. The hop
// never leaves this machine: it runs from the job's own network namespace
// over the job's bridge to convoy's loopback, which is the trust model of
// the router's hop to a model container.
//
// The id in a URI is the capability: 256 random bits. The server keeps
// only its SHA-256, so finding an entry compares hashes, not the secret,
// and a heap dump holds no usable id. Neither ids nor credentials are
// logged.
package credsvc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"convoy/internal/iam"
)

// Prefix starts every URI that Register hands out (the ECS agent's form).
const Prefix = "/v2/credentials/"

const (
	// DefaultLifetime is how long the credentials of one answer last.
	DefaultLifetime = time.Hour
	// DefaultMinLifetime is STS's shortest session (AWS: 15 minutes).
	DefaultMinLifetime = 15 * time.Minute
)

// Minter mints temporary credentials for a role on behalf of the service
// that runs the job, and revokes them before their expiry (sts.Service
// does).
type Minter interface {
	RoleCredentials(role iam.Role, session string, d time.Duration) (akid, secret, token string, exp time.Time)
	RevokeCredentials(akid string, exp time.Time)
}

// Server hands out container credentials. Create it with New.
type Server struct {
	minter Minter
	log    *slog.Logger
	// Lifetime is how long the credentials of one answer last, never past
	// the registration's end; 0 means DefaultLifetime. It is raised to
	// MinLifetime. Set both before Serve.
	Lifetime time.Duration
	// MinLifetime is the shortest Lifetime; 0 means DefaultMinLifetime.
	// Tests lower it as they lower STS's minimum (convoy up
	// --sts-min-session-duration).
	MinLifetime time.Duration

	now      func() time.Time
	requests *prometheus.CounterVec
	http     *http.Server

	mu      sync.Mutex
	entries map[[sha256.Size]byte]entry
}

// entry is one registration.
type entry struct {
	role    iam.Role
	session string
	until   time.Time // zero: until revoked
	// last is the answer given last, handed out again while more than a
	// third of its lifetime remains (see ServeHTTP); nil before the first.
	last *answer
	// minted is every answer's credentials, revoked with the registration.
	minted []minted
}

// minted is one set of credentials an entry handed out.
type minted struct {
	akid string
	exp  time.Time
}

// answer is minted credentials and when they expire.
type answer struct {
	body []byte
	exp  time.Time
	life time.Duration
}

// New returns a server that mints with m.
func New(m Minter, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		minter: m, log: log, now: time.Now,
		entries: map[[sha256.Size]byte]entry{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_container_credentials_requests_total",
			Help: "Requests to the container credentials endpoint, by HTTP status code.",
		}, []string{"code"}),
	}
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s
}

// RegisterMetrics exports the request counter and the number of
// registrations.
func (s *Server) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(s.requests, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "convoy_container_credentials_registrations",
		Help: "Jobs and endpoint instances that may fetch credentials from the container credentials endpoint.",
	}, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(len(s.entries))
	}))
}

// Serve answers on ln, which should be a loopback listener (see the
// package doc), until Close. It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close stops serving, waiting up to ctx for requests in flight.
func (s *Server) Close(ctx context.Context) error {
	if err := s.http.Shutdown(ctx); err != nil {
		return s.http.Close()
	}
	return nil
}

// Register lets whoever holds the returned URI fetch credentials of role,
// under the role session name session, until until (zero: until revoked).
// revoke ends that at once, and revokes every credential the URI handed
// out (Minter.RevokeCredentials), so that none outlives the job; it may be
// called more than once.
func (s *Server) Register(role iam.Role, session string, until time.Time) (relativeURI string, revoke func()) {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	id := hex.EncodeToString(b)
	key := sha256.Sum256([]byte(id))
	now := s.now()
	s.mu.Lock()
	for k, e := range s.entries { // registrations nobody revoked
		if e.expired(now) {
			delete(s.entries, k)
		}
	}
	s.entries[key] = entry{role: role, session: session, until: until}
	s.mu.Unlock()
	return Prefix + id, func() {
		s.mu.Lock()
		e := s.entries[key]
		delete(s.entries, key)
		s.mu.Unlock()
		for _, m := range e.minted {
			s.minter.RevokeCredentials(m.akid, m.exp)
		}
	}
}

func (e entry) expired(now time.Time) bool { return !e.until.IsZero() && !now.Before(e.until) }

// credentials returns the answer for id: the last one while more than a
// third of its lifetime remains, else newly minted ones. An SDK asks again
// only when its credentials near their end (boto3: 15 minutes before), so
// a container normally causes one mint per two thirds of a lifetime, and
// one that asks in a loop causes no more. false: id has no registration,
// or it has ended (then it is dropped).
func (s *Server) credentials(id string, now time.Time) (*answer, bool) {
	key := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if ok && e.expired(now) {
		delete(s.entries, key)
		return nil, false
	}
	if !ok {
		return nil, false
	}
	if a := e.last; a != nil && a.exp.Sub(now) > a.life/3 {
		return a, true
	}
	d := s.lifetime()
	if !e.until.IsZero() {
		d = min(d, e.until.Sub(now))
	}
	// Minting holds the lock: it is a local signature, not a network call.
	akid, secret, token, exp := s.minter.RoleCredentials(e.role, e.session, d)
	body, _ := json.Marshal(response{
		AccessKeyID: akid, SecretAccessKey: secret, Token: token,
		Expiration: exp.UTC().Format("2006-01-02T15:04:05Z"), RoleArn: e.role.ARN,
	})
	e.last = &answer{body: body, exp: exp, life: d}
	e.minted = slices.DeleteFunc(e.minted, func(m minted) bool { return !m.exp.After(now) })
	e.minted = append(e.minted, minted{akid, exp})
	s.entries[key] = e
	return e.last, true
}

// lifetime is the configured lifetime of minted credentials.
func (s *Server) lifetime() time.Duration {
	d, floor := s.Lifetime, s.MinLifetime
	if d == 0 {
		d = DefaultLifetime
	}
	if floor == 0 {
		floor = DefaultMinLifetime
	}
	return max(d, floor)
}

// response is the ECS agent's answer, field for field.
type response struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
	RoleArn         string `json:"RoleArn"`
}

// ServeHTTP answers GET /v2/credentials/<id>.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok || id == "" || strings.Contains(id, "/") {
		s.fail(w, http.StatusNotFound, "NotFound", "no such path: container credentials are at "+Prefix+"<id>, the path AWS_CONTAINER_CREDENTIALS_RELATIVE_URI names")
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		s.fail(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "container credentials are fetched with GET")
		return
	}
	now := s.now()
	a, ok := s.credentials(id, now)
	if !ok {
		s.fail(w, http.StatusNotFound, "NotFound", "no credentials at this URI: the job or endpoint instance it was given to has ended, "+
			"or it never existed. Use the AWS_CONTAINER_CREDENTIALS_RELATIVE_URI of a running job.")
		return
	}
	body := a.body
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
	s.requests.WithLabelValues("200").Inc()
}

// fail answers an error as the ECS agent does: {"code": …, "message": …},
// which the SDKs quote in their error.
func (s *Server) fail(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{code, msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
	s.requests.WithLabelValues(strconv.Itoa(status)).Inc()
}
