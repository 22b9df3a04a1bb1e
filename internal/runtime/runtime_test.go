package runtime

import (
	"bufio"
	"context"
	"encoding/json"

	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// allow is an Authorizer that records what it was asked and allows all but
// the endpoint named "forbidden".
type allow struct {
	mu    sync.Mutex
	asked []string
}

func (a *allow) Authorize(_ context.Context, _ *iam.Principal, action, resource string, _ map[string][]string) error {
	a.mu.Lock()
	a.asked = append(a.asked, action+" "+resource)
	a.mu.Unlock()
	if strings.HasSuffix(resource, "/forbidden") {
		return awsproto.Errorf(http.StatusForbidden, "AccessDenied", "User: x is not authorized to perform: %s on resource: %s", action, resource)
	}
	return nil
}

func newRouter(t *testing.T) (*Router, *allow, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	a := &allow{}
	return New(Config{IAM: a, Account: "123456789012", Region: "us-east-1", Registry: reg}), a, reg
}

func TestPickByWeight(t *testing.T) {
	r, _, _ := newRouter(t)
	r.Set(Endpoint{Name: "e", Status: "InService", Variants: []Variant{
		{Name: "a", Weight: 0.8, Instances: []Instance{{ID: "i-a", Addr: netip.MustParseAddrPort("10.0.0.1:8080")}}},
		{Name: "zero", Weight: 0, Instances: []Instance{{ID: "i-z", Addr: netip.MustParseAddrPort("10.0.0.2:8080")}}},
		{Name: "empty", Weight: 5}, // no instance: never picked
		{Name: "b", Weight: 0.2, Instances: []Instance{{ID: "i-b", Addr: netip.MustParseAddrPort("10.0.0.3:8080")}}},
	}})
	tb := r.acquire("E") // names are case-insensitive
	if tb == nil {
		t.Fatal("endpoint not found by another case")
	}
	defer tb.release()
	for _, tc := range []struct {
		rnd  float64
		want string
	}{{0, "a"}, {0.79, "a"}, {0.8, "b"}, {0.9999999, "b"}} {
		if got := tb.pick(tc.rnd).name; got != tc.want {
			t.Errorf("pick(%v) = %s, want %s", tc.rnd, got, tc.want)
		}
	}
	// The split of random picks is binomial: within 5 sigma of 80 %.
	const n = 100000
	a := 0
	for range n {
		if tb.pick(random()).name == "a" {
			a++
		}
	}
	sigma := math.Sqrt(n * 0.8 * 0.2)
	if math.Abs(float64(a)-0.8*n) > 5*sigma {
		t.Errorf("variant a got %d of %d picks, want 80000 ± %.0f", a, n, 5*sigma)
	}
	if v := tb.variant("zero"); v == nil || len(v.instances) != 1 {
		t.Error("a zero-weight variant must still be there for TargetVariant")
	}
}

func TestLeastLoadedInstance(t *testing.T) {
	v := &variant{}
	for i := range 3 {
		v.instances = append(v.instances, &instance{id: fmt.Sprint(i)})
	}
	// Equal loads take turns.
	seen := map[string]int{}
	for range 30 {
		seen[v.instance().id]++
	}
	for id, n := range seen {
		if n != 10 {
			t.Errorf("instance %s picked %d of 30 times with equal loads: %v", id, n, seen)
		}
	}
	// The least loaded wins wherever the search starts.
	v.instances[0].inflight.Store(3)
	v.instances[1].inflight.Store(1)
	v.instances[2].inflight.Store(2)
	for range 6 {
		if got := v.instance().id; got != "1" {
			t.Fatalf("picked %s, want the least loaded 1", got)
		}
	}
}

func TestDrain(t *testing.T) {
	r, _, _ := newRouter(t)
	addr := netip.MustParseAddrPort("10.0.0.1:8080")
	r.Set(Endpoint{Name: "e", Status: "InService", Variants: []Variant{{Name: "old", Weight: 1, Instances: []Instance{{ID: "i-1", Addr: addr}}}}})
	old := r.acquire("e")
	drained := r.Set(Endpoint{Name: "e", Status: "InService", Variants: []Variant{{Name: "new", Weight: 1,
		Instances: []Instance{{ID: "i-2", Addr: netip.MustParseAddrPort("10.0.0.2:8080")}}}}})
	cur := r.acquire("e")
	if cur.variants[0].name != "new" {
		t.Fatal("a request after Set must see the new table")
	}
	cur.release()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := drained(ctx); err == nil {
		t.Fatal("drained returned while a request of the old table was in flight")
	}
	done := make(chan error, 1)
	go func() { done <- drained(context.Background()) }()
	old.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	_, kept := r.pools[addr]
	r.mu.Unlock()
	if kept {
		t.Error("the old container's pool outlived the drain")
	}
	if n := testSeries(t, r, "old"); n != 0 {
		t.Errorf("the replaced variant still has %d series", n)
	}
	if err := r.Remove("e")(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r.acquire("e") != nil {
		t.Error("removed endpoint still routed")
	}
}

// container is a fake model container.
type container struct {
	srv  *httptest.Server
	addr netip.AddrPort
	hits atomic.Int32
}

func newContainer(t *testing.T, h http.HandlerFunc) *container {
	c := &container{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(c.srv.Close)
	c.addr = netip.MustParseAddrPort(c.srv.Listener.Addr().String())
	return c
}

func invoke(r *Router, name string, body string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/endpoints/"+name+"/invocations", strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	ctx, _ := awsproto.WithRequestID(req.Context())
	w := httptest.NewRecorder()
	r.ServeHTTP(w, req.WithContext(ctx))
	return w
}

func errorOf(t *testing.T, w *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("error body %q: %v", w.Body.String(), err)
	}
	return m
}

func TestInvoke(t *testing.T) {
	r, authz, reg := newRouter(t)
	model := newContainer(t, func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		switch {
		case req.URL.Path != "/invocations":
			w.WriteHeader(http.StatusNotFound)
		case req.Header.Get("Content-Type") != "text/csv":
			w.WriteHeader(http.StatusUnsupportedMediaType)
			io.WriteString(w, "want text/csv")
		default:
			w.Header().Set("Content-Type", "application/json")
			attrs := "echo=" + req.Header.Get("X-Amzn-SageMaker-Custom-Attributes")
			if req.Header.Get("X-Amzn-SageMaker-Custom-Attributes") == "long" {
				attrs = strings.Repeat("a", 1025)
			}
			w.Header().Set("X-Amzn-SageMaker-Custom-Attributes", attrs)
			fmt.Fprintf(w, `{"len":%d,"accept":%q,"id":%q,"other":%q}`, len(b), req.Header.Get("Accept"),
				req.Header.Get("X-Amzn-SageMaker-Inference-Id"), req.Header.Get("X-Other"))
		}
	})
	r.Set(Endpoint{Name: "e1", Status: "InService", Variants: []Variant{{Name: "AllTraffic", Weight: 1,
		Instances: []Instance{{ID: "i-1", Addr: model.addr}}}}})
	r.Set(Endpoint{Name: "creating", Status: "Creating"})

	w := invoke(r, "e1", "1,2,3", map[string]string{"Content-Type": "text/csv", "Accept": "application/json",
		"X-Amzn-SageMaker-Custom-Attributes": "trace=7", "X-Amzn-SageMaker-Inference-Id": "inf-1", "X-Other": "stripped"})
	if w.Code != 200 || w.Body.String() != `{"len":5,"accept":"application/json","id":"inf-1","other":""}` {
		t.Fatalf("invoke: %d %s", w.Code, w.Body)
	}
	if got := w.Header().Get("x-Amzn-Invoked-Production-Variant"); got != "AllTraffic" {
		t.Errorf("invoked variant header %q", got)
	}
	if got := w.Header().Get("X-Amzn-SageMaker-Custom-Attributes"); got != "echo=trace=7" {
		t.Errorf("custom attributes back: %q", got)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	// CustomAttributes over the API's 1024 characters from a container are
	// not passed back.
	w = invoke(r, "e1", "1", map[string]string{"Content-Type": "text/csv", "X-Amzn-SageMaker-Custom-Attributes": "long"})
	if got := w.Header().Get("X-Amzn-SageMaker-Custom-Attributes"); w.Code != 200 || got != "" {
		t.Errorf("a container's 1025-character CustomAttributes: %d, passed back %d characters", w.Code, len(got))
	}
	if got := authz.asked[0]; got != "sagemaker:InvokeEndpoint arn:aws:sagemaker:us-east-1:123456789012:endpoint/e1" {
		t.Errorf("authorized %q", got)
	}

	// The container refuses the content type: ModelError with its status.
	w = invoke(r, "e1", "x", map[string]string{"Content-Type": "application/x-image"})
	m := errorOf(t, w)
	if w.Code != 424 || m["__type"] != "ModelError" || m["OriginalStatusCode"] != 415.0 || m["OriginalMessage"] != "want text/csv" ||
		m["LogStreamArn"] != "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/e1:log-stream:AllTraffic/i-1" ||
		!strings.Contains(m["message"].(string), `Received client error (415) from primary with message "want text/csv"`) {
		t.Errorf("model error: %d %v", w.Code, m)
	}

	for _, tc := range []struct {
		name, endpoint, body string
		hdr                  map[string]string
		status               int
		code, msg            string
	}{
		{"too large", "e1", strings.Repeat("x", MaxPayload+1), nil, 400, "ValidationError", "exceeds the InvokeEndpoint maximum of 6291456 bytes"},
		{"unknown endpoint", "nope", "x", nil, 400, "ValidationError", "Endpoint nope of account 123456789012 not found."},
		{"not in service", "creating", "x", nil, 400, "ValidationError", "is not in service: its status is Creating"},
		{"bad name", "bad_name", "x", nil, 400, "ValidationError", "at 'endpointName' failed to satisfy constraint"},
		{"unknown variant", "e1", "x", map[string]string{"X-Amzn-SageMaker-Target-Variant": "nope"}, 400, "ValidationError", "Variant nope not found"},
		{"attributes", "e1", "x", map[string]string{"X-Amzn-SageMaker-Custom-Attributes": "\x01"}, 400, "ValidationError", "CustomAttributes"},
		{"target model", "e1", "x", map[string]string{"X-Amzn-SageMaker-Target-Model": strings.Repeat("m", 1025)}, 400, "ValidationError", "TargetModel"},
		{"access denied", "forbidden", "x", nil, 403, "AccessDeniedException", "not authorized"},
	} {
		w := invoke(r, tc.endpoint, tc.body, tc.hdr)
		m := errorOf(t, w)
		if w.Code != tc.status || m["__type"] != tc.code || !strings.Contains(fmt.Sprint(m["message"]), tc.msg) {
			t.Errorf("%s: %d %v, want %d %s %q", tc.name, w.Code, m, tc.status, tc.code, tc.msg)
		}
	}
	if n := model.hits.Load(); n != 3 {
		t.Errorf("the container saw %d requests, want 3: refused requests must not reach it", n)
	}
	// The router still serves after all that.
	if w := invoke(r, "e1", "1", map[string]string{"Content-Type": "text/csv"}); w.Code != 200 {
		t.Fatalf("after errors: %d %s", w.Code, w.Body)
	}
	// A body SigV4 verification buffered is sent as it is.
	req := httptest.NewRequest(http.MethodPost, "/endpoints/e1/invocations", nil)
	req.Body = bufferedBody{strings.NewReader("abc"), []byte("abc")}
	req.Header.Set("Content-Type", "text/csv")
	ctx, _ := awsproto.WithRequestID(req.Context())
	w = httptest.NewRecorder()
	r.ServeHTTP(w, req.WithContext(ctx))
	if w.Code != 200 || !strings.HasPrefix(w.Body.String(), `{"len":3,`) {
		t.Fatalf("buffered body: %d %s", w.Code, w.Body)
	}
	if v := counterValue(t, r.metrics.invocations.WithLabelValues("e1", "AllTraffic", "ok")); v != 4 {
		t.Errorf("ok invocations metric %v, want 4", v)
	}
	if v := counterValue(t, r.metrics.invocations.WithLabelValues("e1", "AllTraffic", "model_error")); v != 1 {
		t.Errorf("model_error metric %v, want 1", v)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "convoy_runtime_invocation_duration_seconds" {
			if n := f.GetMetric()[0].GetHistogram().GetSampleCount(); len(f.GetMetric()) != 1 || n != 5 {
				t.Errorf("latency: %d series, %d samples; want 1 series of 5", len(f.GetMetric()), n)
			}
		}
	}
}

// A container that hangs up after every answer while advertising keep-alive
// must not fail invocations: the router retries on a new connection.
func TestInvokeClosedKeepAlive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
				// Closed without "Connection: close": the client thinks it
				// may reuse the connection.
			}()
		}
	}()
	r, _, _ := newRouter(t)
	r.Set(Endpoint{Name: "e", Status: "InService", Variants: []Variant{{Name: "v", Weight: 1,
		Instances: []Instance{{ID: "i-1", Addr: netip.MustParseAddrPort(ln.Addr().String())}}}}})
	for i := range 50 {
		if w := invoke(r, "e", "x", nil); w.Code != 200 || w.Body.String() != "ok" {
			t.Fatalf("invocation %d: %d %s", i, w.Code, w.Body)
		}
	}
}

func TestInvokeTimeoutAndDeadContainer(t *testing.T) {
	release := make(chan struct{})
	slow := newContainer(t, func(w http.ResponseWriter, req *http.Request) { <-release })
	defer close(release)
	r := New(Config{IAM: &allow{}, Account: "123456789012", Region: "us-east-1", Timeout: 50 * time.Millisecond})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	r.Set(Endpoint{Name: "e", Status: "InService", Variants: []Variant{
		{Name: "slow", Weight: 1, Instances: []Instance{{ID: "i-s", Addr: slow.addr}}},
		{Name: "dead", Weight: 0, Instances: []Instance{{ID: "i-d", Addr: dead}}},
	}})
	w := invoke(r, "e", "x", nil)
	if m := errorOf(t, w); w.Code != 424 || m["__type"] != "ModelError" || !strings.Contains(m["message"].(string), "timed out") {
		t.Errorf("slow container: %d %v", w.Code, m)
	}
	w = invoke(r, "e", "x", map[string]string{"X-Amzn-SageMaker-Target-Variant": "dead"})
	if m := errorOf(t, w); w.Code != 424 || m["__type"] != "ModelError" || m["OriginalStatusCode"] != nil {
		t.Errorf("dead container: %d %v", w.Code, m)
	}
}

// bufferedBody is a request body as SigV4 verification leaves it.
type bufferedBody struct {
	*strings.Reader
	b []byte
}

func (b bufferedBody) Bytes() []byte { return b.b }
func (bufferedBody) Close() error    { return nil }

// testSeries counts the invocation series of a variant.
func testSeries(t *testing.T, r *Router, variant string) int {
	t.Helper()
	ch := make(chan prometheus.Metric, 100)
	r.metrics.invocations.Collect(ch)
	close(ch)
	n := 0
	for m := range ch {
		var d dto.Metric
		m.Write(&d)
		for _, l := range d.GetLabel() {
			if l.GetName() == "variant" && l.GetValue() == variant {
				n++
			}
		}
	}
	return n
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestParsePath(t *testing.T) {
	for _, tc := range []struct {
		path, name, op string
		ok             bool
	}{
		{"/endpoints/e1/invocations", "e1", "invocations", true},
		{"/endpoints/e1/invocations-response-stream", "e1", "invocations-response-stream", true},
		{"/endpoints//invocations", "", "", false},
		{"/endpoints/e1/invocations/x", "", "", false},
		{"/endpoints/e1", "", "", false},
		{"/other/e1/invocations", "", "", false},
	} {
		name, op, ok := parsePath(tc.path)
		if name != tc.name || op != tc.op || ok != tc.ok {
			t.Errorf("parsePath(%q) = %q %q %v", tc.path, name, op, ok)
		}
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/endpoints/e1/invocations", "/endpoints/a/b/c", "/endpoints/", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		name, op, ok := parsePath(p)
		if !ok {
			return
		}
		if got := "/endpoints/" + name + "/" + op; got != p || strings.Contains(name, "/") || name == "" {
			t.Fatalf("parsePath(%q) = %q %q: does not rebuild the path", p, name, op)
		}
	})
}

func FuzzVisibleASCII(f *testing.F) {
	f.Add("trace=1", 1024)
	f.Add("\x7f", 10)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 4096 {
			return
		}
		if visibleASCII(s, max) {
			if len(s) > max || strings.ContainsFunc(s, func(r rune) bool { return (r < 0x20 && r != '\t') || r > 0x7e }) {
				t.Fatalf("accepted %q (max %d)", s, max)
			}
		}
	})
}

func TestInvokeWithResponseStream(t *testing.T) {
	r, _, _ := newRouter(t)
	// The container sends a part only when the client has the previous
	// one: the parts can only arrive one by one if the router streams them.
	next := make(chan struct{})
	model := newContainer(t, func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Accept") != "application/jsonlines" {
			w.WriteHeader(http.StatusNotAcceptable)
			return
		}
		w.Header().Set("Content-Type", "application/jsonlines")
		brk := req.Header.Get("X-Amzn-SageMaker-Custom-Attributes") == "break"
		for i := range 3 {
			fmt.Fprintf(w, "{\"token\":%d}\n", i)
			w.(http.Flusher).Flush()
			if !brk {
				<-next
			}
		}
		if brk {
			conn, buf, _ := http.NewResponseController(w).Hijack()
			buf.Flush()
			conn.Close() // in the middle of the chunked body
		}
	})
	r.Set(Endpoint{Name: "e", Status: "InService", Variants: []Variant{{Name: "v", Weight: 1, Instances: []Instance{{ID: "i-1", Addr: model.addr}}}}})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx, _ := awsproto.WithRequestID(req.Context())
		r.ServeHTTP(w, req.WithContext(ctx))
	}))
	t.Cleanup(front.Close)
	call := func(hdr map[string]string) *http.Response {
		req, _ := http.NewRequest(http.MethodPost, front.URL+"/endpoints/e/invocations-response-stream", strings.NewReader("x"))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	resp := call(map[string]string{"X-Amzn-SageMaker-Accept": "application/jsonlines"})
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.amazon.eventstream" ||
		resp.Header.Get("X-Amzn-SageMaker-Content-Type") != "application/jsonlines" || resp.Header.Get("X-Amzn-Invoked-Production-Variant") != "v" {
		t.Fatalf("stream: %d %v", resp.StatusCode, resp.Header)
	}
	dec := eventstream.NewDecoder()
	for i := range 3 {
		m, err := dec.Decode(resp.Body, nil)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if m.Headers.Get(":event-type").String() != "PayloadPart" || m.Headers.Get(":message-type").String() != "event" ||
			string(m.Payload) != fmt.Sprintf("{\"token\":%d}\n", i) {
			t.Fatalf("event %d: %v %q", i, m.Headers, m.Payload)
		}
		next <- struct{}{}
	}
	if b, _ := io.ReadAll(resp.Body); len(b) != 0 {
		t.Fatalf("after the last part: %q", b)
	}

	resp = call(map[string]string{"X-Amzn-SageMaker-Accept": "application/jsonlines", "X-Amzn-SageMaker-Custom-Attributes": "break"})
	var last eventstream.Message
	for {
		m, err := dec.Decode(resp.Body, nil)
		if err != nil {
			break
		}
		last = m
	}
	if last.Headers.Get(":message-type").String() != "exception" || last.Headers.Get(":exception-type").String() != "ModelStreamError" ||
		!strings.Contains(string(last.Payload), `"ErrorCode":"StreamBroken"`) {
		t.Fatalf("a broken stream ends with %v %s", last.Headers, last.Payload)
	}
	// Refused before the stream starts: a plain ModelError.
	resp = call(nil)
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	if resp.StatusCode != 424 || m["OriginalStatusCode"] != 406.0 {
		t.Fatalf("not acceptable: %d %v", resp.StatusCode, m)
	}
}
