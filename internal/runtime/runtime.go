// Package runtime is the SageMaker Runtime request router: InvokeEndpoint
// (restJson1, POST /endpoints/{EndpointName}/invocations) on convoy's one
// TLS listener. It authorizes the caller (sagemaker:InvokeEndpoint on the
// endpoint's ARN), picks a production variant at random by weight (or the
// one X-Amzn-SageMaker-Target-Variant names) and, within it, the instance
// with the fewest requests in flight, and forwards the request over plain
// HTTP to that model container's port 8080. The containers listen only in
// their own network namespaces, on bridges that nothing but convoy's own
// sockets can reach (executor.JobSpec.Expose, ExposeMark), so the plain hop never
// crosses a network; everything a client sends or receives is inside
// convoy's TLS.
//
// The sagemaker package owns endpoints and their containers and tells the
// Router what to route with Set and Remove. A Set takes effect for requests
// that arrive after it; the function it returns waits until the requests
// routed by the previous table have finished, so that the previous
// containers are stopped only once nothing uses them (UpdateEndpoint shifts
// traffic without failing a request).
//
// Written by hand: net/http's ReverseProxy would need as much code to
// rewrite SageMaker's header contract and error shapes, and no library
// speaks the runtime's wire protocol on the server side.
package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"convoy/internal/executor"
	"convoy/internal/iam"
)

// Instance is one running model container.
type Instance struct {
	// ID names the instance; its log stream is <VariantName>/<ID>.
	ID string
	// Addr is the container's port 8080 as convoy's namespace dials it.
	Addr netip.AddrPort
}

// Variant is a production variant and its instances that answer /ping.
type Variant struct {
	Name string
	// Weight is the variant's share of the traffic, relative to the sum of
	// the weights of the endpoint's variants that have instances.
	Weight    float64
	Instances []Instance
}

// Endpoint is what the Router knows of an endpoint.
type Endpoint struct {
	Name string
	// Status is the EndpointStatus, quoted when a request cannot be routed.
	Status string
	// Variants are routed to; an endpoint without variants (Creating,
	// Failed, Deleting) answers every invocation with a ValidationError.
	Variants []Variant
}

// Authorizer decides whether a principal may act on a resource (iam.Store).
type Authorizer interface {
	Authorize(ctx context.Context, p *iam.Principal, action, resource string, cond map[string][]string) error
}

// Config configures a Router.
type Config struct {
	IAM             Authorizer
	Account, Region string
	// Registry receives the invocation metrics; nil registers none.
	Registry prometheus.Registerer
	Log      *slog.Logger
	// Timeout bounds how long a container may take to answer (SageMaker:
	// 60 s); 0 means 60 s.
	Timeout time.Duration
}

// Router routes invocations to model containers.
type Router struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu     sync.Mutex                        // serializes writers of tables and pools
	tables atomic.Pointer[map[string]*table] // by lower-case endpoint name; copied on write
	pools  map[netip.AddrPort]*http.Transport
}

// New returns a Router with no endpoints.
func New(cfg Config) *Router {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	r := &Router{cfg: cfg, log: cfg.Log, metrics: newMetrics(cfg.Registry), pools: map[netip.AddrPort]*http.Transport{}}
	empty := map[string]*table{}
	r.tables.Store(&empty)
	return r
}

// table is one published state of an endpoint. Requests count themselves in
// inflight while they use it, so that its replacement can wait for them.
type table struct {
	name, arn, status string
	variants          []*variant
	routable          []*variant // those with instances and a positive weight
	cum               []float64  // cumulative weights of routable
	inflight          atomic.Int64
}

type variant struct {
	name      string
	weight    float64
	instances []*instance
	next      atomic.Uint32 // where the search for the least loaded instance starts
	m         variantMetrics
}

type instance struct {
	id       string
	addr     netip.AddrPort
	url      string // http://addr/invocations
	stream   string // log stream ARN
	pool     *http.Transport
	inflight atomic.Int32
}

func key(name string) string { return strings.ToLower(name) }

// endpointARN is the ARN InvokeEndpoint is authorized on.
func (r *Router) endpointARN(name string) string {
	return fmt.Sprintf("arn:aws:sagemaker:%s:%s:endpoint/%s", r.cfg.Region, r.cfg.Account, key(name))
}

// LogGroup is the CloudWatch Logs group of an endpoint's containers.
func LogGroup(endpoint string) string { return "/aws/sagemaker/Endpoints/" + endpoint }

func (r *Router) streamARN(endpoint, variant, id string) string {
	return fmt.Sprintf("arn:aws:logs:%s:%s:log-group:%s:log-stream:%s/%s", r.cfg.Region, r.cfg.Account, LogGroup(endpoint), variant, id)
}

// Set publishes ep. Requests that arrive after Set returns are routed by it;
// drained waits until the requests routed by what ep replaces have finished
// (or ctx ends), and then closes the idle connections to containers that
// ep no longer names.
func (r *Router) Set(ep Endpoint) (drained func(context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := &table{name: ep.Name, arn: r.endpointARN(ep.Name), status: ep.Status}
	total := 0.0
	for _, v := range ep.Variants {
		vt := &variant{name: v.Name, weight: v.Weight, m: r.metrics.variant(ep.Name, v.Name)}
		for _, in := range v.Instances {
			vt.instances = append(vt.instances, &instance{
				id:     in.ID,
				addr:   in.Addr,
				url:    "http://" + in.Addr.String() + "/invocations",
				stream: r.streamARN(ep.Name, v.Name, in.ID),
				pool:   r.pool(in.Addr),
			})
		}
		t.variants = append(t.variants, vt)
		if len(vt.instances) > 0 && v.Weight > 0 {
			total += v.Weight
			t.routable = append(t.routable, vt)
			t.cum = append(t.cum, total)
		}
	}
	old := r.swap(key(ep.Name), t)
	return r.drainer(old)
}

// Remove forgets an endpoint: invocations of it fail as for an endpoint
// that does not exist. drained is as for Set.
func (r *Router) Remove(name string) (drained func(context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.swap(key(name), nil)
	r.metrics.forget(name)
	return r.drainer(old)
}

// swap replaces the table of k (nil removes it) and returns the previous
// one. Called with r.mu held.
func (r *Router) swap(k string, t *table) *table {
	cur := *r.tables.Load()
	next := make(map[string]*table, len(cur)+1)
	for n, v := range cur {
		next[n] = v
	}
	old := next[k]
	if t == nil {
		delete(next, k)
	} else {
		next[k] = t
	}
	r.tables.Store(&next)
	return old
}

func (r *Router) drainer(old *table) func(context.Context) error {
	return func(ctx context.Context) error {
		if old != nil {
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for old.inflight.Load() > 0 {
				select {
				case <-ctx.Done():
					return fmt.Errorf("endpoint %s: %d invocations still in flight: %w", old.name, old.inflight.Load(), context.Cause(ctx))
				case <-tick.C:
				}
			}
		}
		r.prune()
		if old != nil {
			r.forgetVariants(old)
		}
		return nil
	}
}

// forgetVariants drops the series of old's variants that the endpoint's
// current table no longer has.
func (r *Router) forgetVariants(old *table) {
	cur := (*r.tables.Load())[key(old.name)]
	for _, v := range old.variants {
		if cur == nil || cur.variant(v.name) == nil {
			r.metrics.forgetVariant(old.name, v.name)
		}
	}
}

// pool returns the connection pool to one container. Called with r.mu held.
func (r *Router) pool(addr netip.AddrPort) *http.Transport {
	if tr, ok := r.pools[addr]; ok {
		return tr
	}
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Control: executor.DialExposed}
	tr := &http.Transport{
		// A private bridge in this machine: no proxy, no TLS, no HTTP/2,
		// no compression (the body is the model's, byte for byte).
		Proxy:               nil,
		DialContext:         d.DialContext,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// Larger than the default 4 KiB: fewer system calls for the
		// megabyte payloads models take.
		WriteBufferSize:        64 << 10,
		ReadBufferSize:         64 << 10,
		MaxResponseHeaderBytes: 64 << 10,
	}
	r.pools[addr] = tr
	return tr
}

// prune closes the pools of containers that no published table names.
func (r *Router) prune() {
	r.mu.Lock()
	defer r.mu.Unlock()
	used := map[netip.AddrPort]bool{}
	for _, t := range *r.tables.Load() {
		for _, v := range t.variants {
			for _, in := range v.instances {
				used[in.addr] = true
			}
		}
	}
	for addr, tr := range r.pools {
		if !used[addr] {
			tr.CloseIdleConnections()
			delete(r.pools, addr)
		}
	}
}

// acquire returns the current table of an endpoint, counted in flight until
// release; nil if the endpoint is unknown. A table that is replaced between
// the load and the count is released and the load retried, so that a
// drained table is never used again.
func (r *Router) acquire(name string) *table {
	k := key(name)
	for {
		t := (*r.tables.Load())[k]
		if t == nil {
			return nil
		}
		t.inflight.Add(1)
		if (*r.tables.Load())[k] == t {
			return t
		}
		t.inflight.Add(-1)
	}
}

func (t *table) release() { t.inflight.Add(-1) }

// pick chooses a variant at random by weight.
func (t *table) pick(rnd float64) *variant {
	if len(t.routable) == 0 {
		return nil
	}
	x := rnd * t.cum[len(t.cum)-1]
	for i, c := range t.cum {
		if x < c {
			return t.routable[i]
		}
	}
	return t.routable[len(t.routable)-1]
}

func (t *table) variant(name string) *variant {
	for _, v := range t.variants {
		if v.name == name {
			return v
		}
	}
	return nil
}

// instance chooses the instance with the fewest requests in flight,
// starting the search round-robin so that equal loads take turns.
func (v *variant) instance() *instance {
	n := len(v.instances)
	if n == 0 {
		return nil
	}
	start := int(v.next.Add(1) % uint32(n))
	best := v.instances[start]
	for i := 1; i < n && best.inflight.Load() > 0; i++ {
		if c := v.instances[(start+i)%n]; c.inflight.Load() < best.inflight.Load() {
			best = c
		}
	}
	return best
}

func random() float64 { return rand.Float64() }
