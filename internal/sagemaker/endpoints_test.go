package sagemaker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/runtime"
)

// fakeHost runs each deployment as one in-process HTTP server per variant
// that answers "<model>/<variant>". A model named "broken" never becomes
// healthy; while hold is open, Start waits.
type fakeHost struct {
	mu      sync.Mutex
	started []*fakeRunning
	hold    chan struct{}
}

type fakeRunning struct {
	d        *Deployment
	variants []runtime.Variant
	servers  []*httptest.Server
	stopped  atomic.Bool
}

func (h *fakeHost) Start(ctx context.Context, d *Deployment, changed func()) (Running, error) {
	h.mu.Lock()
	hold := h.hold
	h.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	fr := &fakeRunning{d: d}
	for _, v := range d.Variants {
		if v.ModelName == "broken" {
			fr.Stop()
			return nil, fmt.Errorf("The primary container for production variant %s did not pass the ping health check", v.VariantName)
		}
		body := v.ModelName + "/" + v.VariantName
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, body)
		}))
		fr.servers = append(fr.servers, srv)
		fr.variants = append(fr.variants, runtime.Variant{Name: v.VariantName, Weight: v.Weight,
			Instances: []runtime.Instance{{ID: "i-0000000000000001", Addr: netip.MustParseAddrPort(srv.Listener.Addr().String())}}})
	}
	h.mu.Lock()
	h.started = append(h.started, fr)
	h.mu.Unlock()
	return fr, nil
}

// setHold makes Start wait until the channel is closed (nil: no wait).
func (h *fakeHost) setHold(c chan struct{}) {
	h.mu.Lock()
	h.hold = c
	h.mu.Unlock()
}

func (f *fakeRunning) Variants() []runtime.Variant { return f.variants }

func (f *fakeRunning) Stop() {
	f.stopped.Store(true)
	for _, s := range f.servers {
		s.Close()
	}
}

// hostEnv is an env whose service runs endpoints on a fakeHost, routed by
// a real runtime.Router.
type hostEnv struct {
	*env
	host   *fakeHost
	router *runtime.Router
	cancel context.CancelFunc
}

func newHostEnv(t *testing.T) *hostEnv {
	e := newEnv(t)
	h := &hostEnv{env: e, host: &fakeHost{}}
	h.restart()
	return h
}

// restart opens the service again over the same database, as a convoy
// restart does.
func (h *hostEnv) restart() {
	h.t.Helper()
	if h.cancel != nil {
		h.cancel()
		h.svc.Wait()
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.t.Cleanup(func() { cancel(); h.svc.Wait() })
	svc, err := Open(ctx, h.db, h.ids, "us-east-1", h.runner, slog.New(slog.DiscardHandler))
	if err != nil {
		h.t.Fatal(err)
	}
	h.svc = svc
	h.router = runtime.New(runtime.Config{IAM: h.ids, Account: h.ids.AccountID(), Region: "us-east-1"})
	if err := svc.ServeEndpoints(ctx, h.host, h.router); err != nil {
		h.t.Fatal(err)
	}
}

func (h *hostEnv) must(op string, body any) map[string]any {
	h.t.Helper()
	code, out := h.call(op, body, h.admin)
	if code != 200 {
		h.t.Fatalf("%s: %d %v", op, code, out)
	}
	return out
}

func (h *hostEnv) model(name string) {
	h.t.Helper()
	h.must("CreateModel", map[string]any{"ModelName": name, "ExecutionRoleArn": h.role,
		"PrimaryContainer": map[string]any{"Image": "server:1", "ModelDataUrl": "s3://models/" + name + "/model.tar.gz"}})
}

func (h *hostEnv) config(name string, variants ...map[string]any) {
	h.t.Helper()
	h.must("CreateEndpointConfig", map[string]any{"EndpointConfigName": name, "ProductionVariants": variants})
}

func variantOf(name, model string, weight float64) map[string]any {
	return map[string]any{"VariantName": name, "ModelName": model, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large", "InitialVariantWeight": weight}
}

func (h *hostEnv) waitEndpoint(name string, done func(map[string]any) bool) map[string]any {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, d := h.call("DescribeEndpoint", map[string]string{"EndpointName": name}, h.admin)
		if done(d) || (code != 200 && done(nil)) {
			return d
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("endpoint %s: still %d %v", name, code, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func status(want string) func(map[string]any) bool {
	return func(d map[string]any) bool { return d != nil && d["EndpointStatus"] == want }
}

// invoke calls the endpoint through the router and returns the body.
func (h *hostEnv) invoke(name string) (int, string) {
	req := httptest.NewRequest(http.MethodPost, "/endpoints/"+name+"/invocations", strings.NewReader("x"))
	ctx, _ := awsproto.WithRequestID(req.Context())
	req = req.WithContext(iam.WithPrincipal(ctx, h.admin))
	w := httptest.NewRecorder()
	h.router.ServeHTTP(w, req)
	return w.Code, w.Body.String()
}

func TestHostingValidation(t *testing.T) {
	h := newHostEnv(t)
	h.model("m1")
	for _, tc := range []struct {
		op   string
		body map[string]any
		code string
		msg  string
	}{
		{"CreateModel", map[string]any{"ModelName": "bad_name", "PrimaryContainer": map[string]any{"Image": "x"}}, "ValidationException",
			"Value 'bad_name' at 'modelName' failed to satisfy constraint"},
		{"CreateModel", map[string]any{"ModelName": "m2"}, "ValidationException", "Either PrimaryContainer or Containers is required"},
		{"CreateModel", map[string]any{"ModelName": "m2", "PrimaryContainer": map[string]any{"Image": "x"}, "Containers": []any{map[string]any{"Image": "x"}}},
			"ValidationException", "not both"},
		{"CreateModel", map[string]any{"ModelName": "m2", "PrimaryContainer": map[string]any{"Image": "x", "ModelDataUrl": "https://example.com/m.tar.gz"}, "ExecutionRoleArn": h.role},
			"ValidationException", "fetches model data from its object store only"},
		{"CreateModel", map[string]any{"ModelName": "m2", "PrimaryContainer": map[string]any{"Image": "x", "ModelDataUrl": "s3://bkt/m.tar.gz"}},
			"ValidationException", "ExecutionRoleArn is required with ModelDataUrl"},
		{"CreateModel", map[string]any{"ModelName": "m2", "PrimaryContainer": map[string]any{"Image": "x"}, "ExecutionRoleArn": "arn:aws:iam::" + h.ids.AccountID() + ":role/nope"},
			"ValidationException", "Could not assume role"},
		{"CreateModel", map[string]any{"ModelName": "M1", "PrimaryContainer": map[string]any{"Image": "x"}}, "ValidationException",
			`Cannot create already existing model "arn:aws:sagemaker:us-east-1:` + h.ids.AccountID() + `:model/m1"`},
		{"DescribeModel", map[string]any{"ModelName": "nope"}, "ValidationException", `Could not find model "arn:aws:sagemaker:us-east-1:`},
		{"CreateEndpointConfig", map[string]any{"EndpointConfigName": "c", "ProductionVariants": []any{variantOf("v", "nope", 1)}},
			"ValidationException", `Could not find model`},
		{"CreateEndpointConfig", map[string]any{"EndpointConfigName": "c", "ProductionVariants": []any{variantOf("v", "m1", 0)}},
			"ValidationException", "sum of the InitialVariantWeight values must be greater than 0"},
		{"CreateEndpointConfig", map[string]any{"EndpointConfigName": "c", "ProductionVariants": []any{variantOf("v", "m1", 1), variantOf("V", "m1", 1)}},
			"ValidationException", "appears more than once"},
		{"CreateEndpointConfig", map[string]any{"EndpointConfigName": "c", "ProductionVariants": []any{
			map[string]any{"VariantName": "v", "ModelName": "m1", "InitialInstanceCount": 17, "InstanceType": "ml.m5.large"}}},
			"ResourceLimitExceeded", "exceeds this convoy's limit of 16 instances"},
		{"CreateEndpointConfig", map[string]any{"EndpointConfigName": "c", "ProductionVariants": []any{}}, "ValidationException", "Member must have length between 1 and 10"},
		{"CreateEndpoint", map[string]any{"EndpointName": "e", "EndpointConfigName": "nope"}, "ValidationException", `Could not find endpoint configuration "arn:aws:sagemaker:us-east-1:`},
		{"CreateEndpoint", map[string]any{"EndpointName": "-e", "EndpointConfigName": "c"}, "ValidationException", "at 'endpointName' failed to satisfy constraint"},
		{"DescribeEndpoint", map[string]any{"EndpointName": "nope"}, "ValidationException", `Could not find endpoint "arn:aws:sagemaker:us-east-1:`},
		{"DeleteEndpoint", map[string]any{"EndpointName": "nope"}, "ValidationException", `Could not find endpoint`},
		{"UpdateEndpoint", map[string]any{"EndpointName": "nope", "EndpointConfigName": "c"}, "ValidationException", `Could not find endpoint`},
		{"DeleteEndpointConfig", map[string]any{"EndpointConfigName": "nope"}, "ValidationException", `Could not find endpoint configuration`},
	} {
		code, out := h.call(tc.op, tc.body, h.admin)
		if code != 400 || out["__type"] != tc.code || !strings.Contains(fmt.Sprint(out["message"]), tc.msg) {
			t.Errorf("%s %v: %d %v, want %s %q", tc.op, tc.body, code, out, tc.code, tc.msg)
		}
	}
	// Described as created, with the default weight filled in.
	h.config("c1", map[string]any{"VariantName": "v", "ModelName": "m1", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"})
	d := h.must("DescribeEndpointConfig", map[string]any{"EndpointConfigName": "c1"})
	if v := d["ProductionVariants"].([]any)[0].(map[string]any); v["InitialVariantWeight"] != 1.0 || d["EndpointConfigArn"] == nil {
		t.Errorf("describe endpoint config: %v", d)
	}
	m := h.must("DescribeModel", map[string]any{"ModelName": "m1"})
	if m["ModelArn"] == nil || m["PrimaryContainer"].(map[string]any)["Image"] != "server:1" || m["ExecutionRoleArn"] != h.role {
		t.Errorf("describe model: %v", m)
	}
	if l := h.must("ListModels", map[string]any{"NameContains": "M"}); len(l["Models"].([]any)) != 1 {
		t.Errorf("list models: %v", l)
	}
	// Tags work on the new resources.
	arn := m["ModelArn"].(string)
	h.must("AddTags", map[string]any{"ResourceArn": arn, "Tags": []any{map[string]any{"Key": "team", "Value": "ml"}}})
	if tags := h.must("ListTags", map[string]any{"ResourceArn": arn}); len(tags["Tags"].([]any)) != 1 {
		t.Errorf("model tags: %v", tags)
	}
	h.must("DeleteModel", map[string]any{"ModelName": "m1"})
	if code, _ := h.call("ListTags", map[string]any{"ResourceArn": arn}, h.admin); code != 400 {
		t.Error("a deleted model's tags are still listed")
	}
}

func TestEndpointLifecycle(t *testing.T) {
	h := newHostEnv(t)
	h.model("m1")
	h.model("m2")
	h.model("broken")
	h.config("c1", variantOf("a", "m1", 1))
	h.config("c2", variantOf("b", "m2", 1))
	h.config("bad", variantOf("x", "broken", 1))

	hold := make(chan struct{})
	h.host.setHold(hold)
	h.must("CreateEndpoint", map[string]any{"EndpointName": "ep", "EndpointConfigName": "c1",
		"Tags": []any{map[string]any{"Key": "k", "Value": "v"}}})
	d := h.must("DescribeEndpoint", map[string]any{"EndpointName": "ep"})
	if d["EndpointStatus"] != "Creating" || d["ProductionVariants"].([]any)[0].(map[string]any)["DesiredInstanceCount"] != 1.0 {
		t.Fatalf("creating: %v", d)
	}
	if code, body := h.invoke("ep"); code != 400 || !strings.Contains(body, "is not in service: its status is Creating") {
		t.Fatalf("invoke while creating: %d %s", code, body)
	}
	if code, out := h.call("UpdateEndpoint", map[string]any{"EndpointName": "ep", "EndpointConfigName": "c2"}, h.admin); code != 400 ||
		!strings.Contains(fmt.Sprint(out["message"]), "Cannot update in-progress endpoint") {
		t.Fatalf("update while creating: %d %v", code, out)
	}
	h.host.setHold(nil)
	close(hold)
	d = h.waitEndpoint("ep", status("InService"))
	if v := d["ProductionVariants"].([]any)[0].(map[string]any); v["CurrentInstanceCount"] != 1.0 || v["CurrentWeight"] != 1.0 || v["VariantName"] != "a" {
		t.Fatalf("in service: %v", d)
	}
	if code, body := h.invoke("ep"); code != 200 || body != "m1/a" {
		t.Fatalf("invoke: %d %s", code, body)
	}

	// An update while invocations run: none fails, and afterwards all go
	// to the new variant; the old instances are stopped.
	var failed, done atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if code, body := h.invoke("ep"); code != 200 {
					failed.Add(1)
					t.Errorf("invocation during the update: %d %s", code, body)
				}
				done.Add(1)
			}
		}()
	}
	h.must("UpdateEndpoint", map[string]any{"EndpointName": "ep", "EndpointConfigName": "c2"})
	h.waitEndpoint("ep", func(d map[string]any) bool {
		return d["EndpointStatus"] == "InService" && d["EndpointConfigName"] == "c2"
	})
	h.host.mu.Lock()
	first := h.host.started[0]
	h.host.mu.Unlock()
	for !first.stopped.Load() {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || done.Load() == 0 {
		t.Fatalf("%d of %d invocations failed during the update", failed.Load(), done.Load())
	}
	for range 20 {
		if code, body := h.invoke("ep"); code != 200 || body != "m2/b" {
			t.Fatalf("after the update: %d %s", code, body)
		}
	}

	// A failing update leaves the endpoint in service on what it ran.
	h.must("UpdateEndpoint", map[string]any{"EndpointName": "ep", "EndpointConfigName": "bad"})
	d = h.waitEndpoint("ep", func(d map[string]any) bool { return d["EndpointStatus"] == "InService" && d["FailureReason"] != nil })
	if d["EndpointConfigName"] != "c2" || !strings.Contains(d["FailureReason"].(string), "Failed to update the endpoint to endpoint configuration bad") {
		t.Fatalf("after a failed update: %v", d)
	}
	if code, body := h.invoke("ep"); code != 200 || body != "m2/b" {
		t.Fatalf("after a failed update: %d %s", code, body)
	}

	// A failing creation is Failed with the reason.
	h.must("CreateEndpoint", map[string]any{"EndpointName": "ep-bad", "EndpointConfigName": "bad"})
	d = h.waitEndpoint("ep-bad", status("Failed"))
	if !strings.Contains(fmt.Sprint(d["FailureReason"]), "did not pass the ping health check") {
		t.Fatalf("failed endpoint: %v", d)
	}
	if l := h.must("ListEndpoints", map[string]any{"StatusEquals": "Failed"}); len(l["Endpoints"].([]any)) != 1 {
		t.Errorf("list failed endpoints: %v", l)
	}

	// Deletion stops the instances and forgets the endpoint and its tags.
	h.must("DeleteEndpoint", map[string]any{"EndpointName": "ep"})
	h.waitEndpoint("ep", func(d map[string]any) bool { return d == nil || d["__type"] == "ValidationException" })
	h.host.mu.Lock()
	for i, r := range h.host.started {
		if !r.stopped.Load() {
			t.Errorf("deployment %d (%s) still runs after DeleteEndpoint", i, r.d.ConfigName)
		}
	}
	h.host.mu.Unlock()
	if code, body := h.invoke("ep"); code != 400 || !strings.Contains(body, "not found") {
		t.Fatalf("invoke a deleted endpoint: %d %s", code, body)
	}
	var n int
	h.db.QueryRow(`SELECT COUNT(*) FROM sm_tags WHERE arn LIKE '%:endpoint/ep'`).Scan(&n)
	if n != 0 {
		t.Error("the deleted endpoint's tags are left")
	}
}

// Containers do not survive convoy: after a restart, endpoints are started
// again (or deleted, or Failed), never left claiming InService.
func TestEndpointsAfterRestart(t *testing.T) {
	h := newHostEnv(t)
	h.model("m1")
	h.model("m2")
	h.config("c1", variantOf("a", "m1", 1))
	h.config("c2", variantOf("b", "m2", 1))
	for _, name := range []string{"running", "updating"} {
		h.must("CreateEndpoint", map[string]any{"EndpointName": name, "EndpointConfigName": "c1"})
		h.waitEndpoint(name, status("InService"))
	}
	// Stop convoy while one endpoint updates, one is created and one is
	// being deleted.
	h.host.setHold(make(chan struct{}))
	h.must("UpdateEndpoint", map[string]any{"EndpointName": "updating", "EndpointConfigName": "c2"})
	h.must("CreateEndpoint", map[string]any{"EndpointName": "creating", "EndpointConfigName": "c2"})
	h.db.Exec(`INSERT INTO sm_endpoints (name, arn, creator, status, config_name, created, modified) VALUES ('deleting', 'x', 'x', 'Deleting', 'c1', ?, ?)`, stamp(), stamp())
	h.cancel()
	h.svc.Wait()
	h.host.mu.Lock()
	for i, r := range h.host.started {
		if !r.stopped.Load() {
			t.Errorf("deployment %d still runs after shutdown", i)
		}
	}
	h.host.mu.Unlock()
	h.host.setHold(nil)

	h.restart()
	d := h.waitEndpoint("running", status("InService"))
	if d["EndpointConfigName"] != "c1" {
		t.Errorf("running: %v", d)
	}
	d = h.waitEndpoint("updating", status("InService"))
	if d["EndpointConfigName"] != "c1" || !strings.Contains(fmt.Sprint(d["FailureReason"]), "convoy restarted while this endpoint was being updated to endpoint configuration c2") {
		t.Errorf("updating: %v", d)
	}
	d = h.waitEndpoint("creating", status("InService"))
	if d["EndpointConfigName"] != "c2" {
		t.Errorf("creating: %v", d)
	}
	if code, _ := h.call("DescribeEndpoint", map[string]string{"EndpointName": "deleting"}, h.admin); code != 400 {
		t.Error("an endpoint being deleted at shutdown is still there")
	}
	for _, name := range []string{"running", "updating", "creating"} {
		if code, body := h.invoke(name); code != 200 {
			t.Errorf("invoke %s after restart: %d %s", name, code, body)
		}
	}

	// Without a host (no executor), what ran is Failed with the reason.
	h.cancel()
	h.svc.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	svc, err := Open(ctx, h.db, h.ids, "us-east-1", nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.ServeEndpoints(ctx, nil, runtime.New(runtime.Config{IAM: h.ids})); err != nil {
		t.Fatal(err)
	}
	h.svc = svc
	d = h.must("DescribeEndpoint", map[string]any{"EndpointName": "running"})
	if d["EndpointStatus"] != "Failed" || !strings.Contains(fmt.Sprint(d["FailureReason"]), "without a container executor") {
		t.Errorf("without an executor: %v", d)
	}
	if code, out := h.call("CreateEndpoint", map[string]any{"EndpointName": "new", "EndpointConfigName": "c1"}, h.admin); code != 400 ||
		!strings.Contains(fmt.Sprint(out["message"]), "no container executor") {
		t.Errorf("create without an executor: %d %v", code, out)
	}
}
