package credsvc

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"convoy/internal/iam"
	"convoy/internal/iam/iamtest"
	"convoy/internal/sts"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs s on a loopback listener until the test ends and returns its
// base URL.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, method, url string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// With convoy's real STS: the answer has exactly the ECS agent's fields,
// and its credentials are ones STS accepts, for an assumed-role session of
// the registered role.
func TestRealSTS(t *testing.T) {
	ctx := context.Background()
	_, box, ids := iamtest.Open(t)
	role, err := ids.CreateRole(ctx, iam.Role{Name: "trainer",
		Trust: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`})
	if err != nil {
		t.Fatal(err)
	}
	tokens := sts.New(ids, box, quiet)
	s := New(tokens, quiet)
	base := serve(t, s)
	uri, revoke := s.Register(role, "job-1", time.Now().Add(3*time.Hour))
	defer revoke()
	if !strings.HasPrefix(uri, Prefix) || len(strings.TrimPrefix(uri, Prefix)) < 32 {
		t.Fatalf("uri %q: want %s<at least 128 bits of hex>", uri, Prefix)
	}

	code, h, body := get(t, http.MethodGet, base+uri)
	if code != http.StatusOK || h.Get("Content-Type") != "application/json" {
		t.Fatalf("GET: %d %s %s", code, h.Get("Content-Type"), body)
	}
	var fields map[string]string
	if err := json.Unmarshal(body, &fields); err != nil {
		t.Fatalf("answer is not a JSON object of strings: %v: %s", err, body)
	}
	var keys []string
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"AccessKeyId", "Expiration", "RoleArn", "SecretAccessKey", "Token"}; !slices.Equal(keys, want) {
		t.Fatalf("fields %v, want %v", keys, want)
	}
	exp, err := time.Parse("2006-01-02T15:04:05Z", fields["Expiration"])
	if err != nil {
		t.Fatalf("Expiration %q: %v", fields["Expiration"], err)
	}
	if left := time.Until(exp); left < DefaultLifetime-time.Minute || left > DefaultLifetime+time.Second {
		t.Errorf("credentials last %v, want %v", left, DefaultLifetime)
	}
	if fields["RoleArn"] != role.ARN {
		t.Errorf("RoleArn %q, want %q", fields["RoleArn"], role.ARN)
	}
	secret, p, err := tokens.Lookup(ctx, fields["AccessKeyId"], fields["Token"])
	if err != nil {
		t.Fatalf("STS does not accept the credentials: %v", err)
	}
	if secret != fields["SecretAccessKey"] || p.RoleARN != role.ARN || !strings.HasSuffix(p.ARN, ":assumed-role/trainer/job-1") {
		t.Errorf("STS sees %s (role %s), secret match %t", p.ARN, p.RoleARN, secret == fields["SecretAccessKey"])
	}
	// Asked again at once, the same session (see TestReuse).
	_, _, again := get(t, http.MethodGet, base+uri)
	var second map[string]string
	json.Unmarshal(again, &second)
	if second["AccessKeyId"] != fields["AccessKeyId"] {
		t.Errorf("second answer's key %q, want the first's %q", second["AccessKeyId"], fields["AccessKeyId"])
	}

	// Another registration of the same role is not touched by this one's
	// revocation.
	other, revokeOther := s.Register(role, "job-2", time.Now().Add(3*time.Hour))
	defer revokeOther()
	_, _, ob := get(t, http.MethodGet, base+other)
	var otherFields map[string]string
	json.Unmarshal(ob, &otherFields)

	revoke()
	if code, _, _ := get(t, http.MethodGet, base+uri); code != http.StatusNotFound {
		t.Errorf("after revoke: %d", code)
	}
	// What the URI handed out dies with it: a copy taken out of the
	// container no longer authenticates, though it has not expired.
	if _, _, err := tokens.Lookup(ctx, fields["AccessKeyId"], fields["Token"]); err != sts.ErrInvalidToken {
		t.Errorf("credentials of a revoked registration: Lookup error %v, want ErrInvalidToken", err)
	}
	if _, _, err := tokens.Lookup(ctx, otherFields["AccessKeyId"], otherFields["Token"]); err != nil {
		t.Errorf("credentials of another, live registration: %v", err)
	}
}

// fakeMinter records the lifetimes asked for.
type fakeMinter struct {
	mu    sync.Mutex
	asked []time.Duration
	now   func() time.Time
}

func (f *fakeMinter) RoleCredentials(role iam.Role, session string, d time.Duration) (string, string, string, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, d)
	return "ASIAFAKE", "secret", "token-" + session, f.now().Add(d)
}

func (f *fakeMinter) RevokeCredentials(string, time.Time) {}

func (f *fakeMinter) last() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked[len(f.asked)-1]
}

// clock is a settable time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func fakeServer() (*Server, *fakeMinter, *clock) {
	c := &clock{t: time.Date(2026, 11, 26, 1, 2, 3, 0, time.UTC)}
	m := &fakeMinter{now: c.now}
	s := New(m, quiet)
	s.now = c.now
	return s, m, c
}

func TestRefusals(t *testing.T) {
	s, _, clk := fakeServer()
	role := iam.Role{Name: "r", ARN: "arn:aws:iam::123456789012:role/r"}
	live, revokeLive := s.Register(role, "live", clk.now().Add(time.Hour))
	defer revokeLive()
	revoked, revoke := s.Register(role, "gone", time.Time{})
	revoke()
	revoke() // idempotent
	ending, revokeEnding := s.Register(role, "ending", clk.now().Add(time.Minute))
	defer revokeEnding()
	forever, revokeForever := s.Register(role, "forever", time.Time{})
	defer revokeForever()
	unknown := Prefix + strings.Repeat("0", 64)

	call := func(method, path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest(method, path, nil))
		return w
	}
	for _, tc := range []struct {
		name, method, path string
		status             int
	}{
		{"live", http.MethodGet, live, http.StatusOK},
		{"ending before its end", http.MethodGet, ending, http.StatusOK},
		{"unknown id", http.MethodGet, unknown, http.StatusNotFound},
		{"revoked", http.MethodGet, revoked, http.StatusNotFound},
		{"no id", http.MethodGet, Prefix, http.StatusNotFound},
		{"id with a suffix", http.MethodGet, live + "/x", http.StatusNotFound},
		{"id as a prefix", http.MethodGet, live[:len(live)-1], http.StatusNotFound},
		{"other path", http.MethodGet, "/v1/credentials", http.StatusNotFound},
		{"root", http.MethodGet, "/", http.StatusNotFound},
		{"POST", http.MethodPost, live, http.StatusMethodNotAllowed},
		{"PUT", http.MethodPut, live, http.StatusMethodNotAllowed},
		{"DELETE", http.MethodDelete, live, http.StatusMethodNotAllowed},
		{"HEAD", http.MethodHead, live, http.StatusMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := call(tc.method, tc.path)
			if w.Code != tc.status {
				t.Fatalf("%s %s: %d, want %d: %s", tc.method, tc.path, w.Code, tc.status, w.Body)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if tc.status == http.StatusMethodNotAllowed && w.Header().Get("Allow") != http.MethodGet {
				t.Errorf("Allow %q", w.Header().Get("Allow"))
			}
			if tc.status != http.StatusOK && tc.method != http.MethodHead {
				var e struct{ Code, Message string }
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code == "" || e.Message == "" {
					t.Errorf("error body %q: %v", w.Body, err)
				}
				if strings.Contains(w.Body.String(), "secret") || strings.Contains(w.Body.String(), "ASIA") {
					t.Errorf("error body carries credentials: %s", w.Body)
				}
			}
		})
	}

	// Past its end a registration answers 404, and stays gone.
	clk.add(time.Minute)
	for range 2 {
		if w := call(http.MethodGet, ending); w.Code != http.StatusNotFound {
			t.Fatalf("at its end: %d %s", w.Code, w.Body)
		}
	}
	clk.add(1000 * time.Hour)
	if w := call(http.MethodGet, live); w.Code != http.StatusNotFound {
		t.Errorf("long after its end: %d", w.Code)
	}
	if w := call(http.MethodGet, forever); w.Code != http.StatusOK {
		t.Errorf("a registration without an end: %d", w.Code)
	}
	var m dto.Metric
	if err := s.requests.WithLabelValues("405").Write(&m); err != nil || m.GetCounter().GetValue() != 4 {
		got := m.GetCounter().GetValue()
		t.Errorf("405s counted %v, want 4", got)
	}
}

func TestLifetime(t *testing.T) {
	role := iam.Role{Name: "r", ARN: "arn:aws:iam::123456789012:role/r"}
	for _, tc := range []struct {
		name            string
		lifetime, floor time.Duration
		until           time.Duration // from now; 0: none
		want            time.Duration
	}{
		{"default", 0, 0, 0, time.Hour},
		{"default, far end", 0, 0, 48 * time.Hour, time.Hour},
		{"clamped to the end", 0, 0, 10 * time.Minute, 10 * time.Minute},
		{"clamped to the end, below the floor", 0, 0, 30 * time.Second, 30 * time.Second},
		{"configured", 2 * time.Hour, 0, 0, 2 * time.Hour},
		{"below STS's minimum", time.Minute, 0, 0, DefaultMinLifetime},
		{"lowered minimum", 5 * time.Second, 2 * time.Second, 0, 5 * time.Second},
		{"below a lowered minimum", time.Second, 2 * time.Second, time.Hour, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, m, clk := fakeServer()
			s.Lifetime, s.MinLifetime = tc.lifetime, tc.floor
			var until time.Time
			if tc.until > 0 {
				until = clk.now().Add(tc.until)
			}
			uri, revoke := s.Register(role, "s", until)
			defer revoke()
			w := httptest.NewRecorder()
			s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, uri, nil))
			if w.Code != http.StatusOK {
				t.Fatalf("%d %s", w.Code, w.Body)
			}
			if got := m.last(); got != tc.want {
				t.Errorf("minted for %v, want %v", got, tc.want)
			}
			var r response
			json.Unmarshal(w.Body.Bytes(), &r)
			exp, _ := time.Parse(time.RFC3339, r.Expiration)
			if !until.IsZero() && exp.After(until) {
				t.Errorf("expires %s, after the registration's end %s", exp, until)
			}
			if want := clk.now().Add(tc.want).Format("2006-01-02T15:04:05Z"); r.Expiration != want {
				t.Errorf("Expiration %q, want %q", r.Expiration, want)
			}
		})
	}
}

// The server holds hashes of the ids, never the ids.
func TestStoresHashes(t *testing.T) {
	s, _, clk := fakeServer()
	uri, revoke := s.Register(iam.Role{}, "s", clk.now().Add(time.Hour))
	id := strings.TrimPrefix(uri, Prefix)
	if _, ok := s.entries[sha256.Sum256([]byte(id))]; !ok || len(s.entries) != 1 {
		t.Fatalf("entries %d, keyed by the id's hash %t", len(s.entries), ok)
	}
	_, revoke2 := s.Register(iam.Role{}, "s", clk.now().Add(time.Hour))
	defer revoke2()
	revoke()
	if len(s.entries) != 1 {
		t.Errorf("after revoke: %d entries", len(s.entries))
	}
	// A registration nobody revoked goes at the next Register after its end.
	clk.add(2 * time.Hour)
	_, revoke3 := s.Register(iam.Role{}, "s", time.Time{})
	defer revoke3()
	if len(s.entries) != 1 {
		t.Errorf("ended registrations kept: %d entries", len(s.entries))
	}
}

func TestConcurrent(t *testing.T) {
	s, _, clk := fakeServer()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				uri, revoke := s.Register(iam.Role{}, "s", clk.now().Add(time.Hour))
				w := httptest.NewRecorder()
				s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, uri, nil))
				if w.Code != http.StatusOK {
					t.Errorf("worker %d: %d", i, w.Code)
				}
				revoke()
				w = httptest.NewRecorder()
				s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, uri, nil))
				if w.Code != http.StatusNotFound {
					t.Errorf("worker %d after revoke: %d", i, w.Code)
				}
			}
		}()
	}
	wg.Wait()
}

// An answer is handed out again while more than a third of its lifetime
// remains, then new credentials are minted: an SDK that asks as its
// credentials near their end gets fresh ones, a container asking in a loop
// mints nothing. Revocation ends it at once all the same.
func TestReuse(t *testing.T) {
	role := iam.Role{Name: "r", ARN: "arn:aws:iam::123456789012:role/r"}
	s, m, clk := fakeServer()
	uri, revoke := s.Register(role, "s", time.Time{})
	ask := func() response {
		t.Helper()
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, uri, nil))
		if w.Code != http.StatusOK {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
		var r response
		if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	mints := func() int { m.mu.Lock(); defer m.mu.Unlock(); return len(m.asked) }
	first := ask()
	for range 100 {
		if r := ask(); r != first {
			t.Fatalf("asked again at once: %+v, want the first answer %+v", r, first)
		}
	}
	if mints() != 1 {
		t.Fatalf("101 answers at once minted %d times, want once", mints())
	}
	clk.add(40*time.Minute - time.Second) // 20 min and 1 s left of 1 h
	if ask() != first || mints() != 1 {
		t.Fatalf("with more than a third left: %d mints, want the first answer again", mints())
	}
	clk.add(2 * time.Second) // 19 min 59 s left
	second := ask()
	if mints() != 2 {
		t.Fatalf("with less than a third left: %d mints, want a new one", mints())
	}
	if second.Expiration == first.Expiration {
		t.Errorf("new answer expires %s, as the old one", second.Expiration)
	}
	revoke()
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, uri, nil))
	if w.Code != http.StatusNotFound {
		t.Errorf("after revoke, with an answer held: %d", w.Code)
	}
}
