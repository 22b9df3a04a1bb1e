package sagemaker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/internal/executor"
	"convoy/internal/images"
	"convoy/internal/runtime"
)

// LocalModelHost runs endpoint instances on this machine under SageMaker's
// inference container contract, with the training runner's executor, image
// store, role credentials and access to convoy's API:
//
//   - each instance is one executor job of one host, running the image's
//     ENTRYPOINT with the argument "serve", in its own network namespace,
//     with port 8080 exposed to convoy's namespace and nothing else
//     (executor.JobSpec.Expose);
//   - the model's ModelDataUrl (a model.tar.gz in convoy's object store) is
//     fetched once per variant with the model's execution role and unpacked
//     (extractModel) into a directory every instance of the variant mounts
//     read-only at /opt/ml/model;
//   - an instance is in service once GET /ping answers 200; one that exits,
//     or stops answering /ping with 200 within 2 s for UnhealthyAfter
//     checks in a row (a hung model server), is taken out of the routes,
//     killed and replaced;
//   - the container's output goes to Dir/<endpoint>/logs/<variant>/<instance>,
//     the log stream <variant>/<instance> of /aws/sagemaker/Endpoints/<name>.
//
// Without EnableNetworkIsolation a container may reach convoy's API and,
// when the model has an execution role, gets the role's credentials as a
// training container does: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI names the
// instance's own registration at the credentials endpoint, where the AWS
// SDKs fetch short-lived credentials and fetch new ones before they expire,
// for as long as the instance runs; stopping or replacing the instance
// revokes it. With EnableNetworkIsolation, neither.
type LocalModelHost struct {
	Runner *LocalRunner
	// Dir holds one directory per endpoint: its deployments' model data
	// (removed with them) and its logs (kept).
	Dir string
	// PingInterval is the pause between health checks while an instance
	// starts; 0 means 200 ms.
	PingInterval time.Duration
	// HealthInterval is the pause between health checks of an instance in
	// service; 0 means 5 s. UnhealthyAfter is how many failed checks in a
	// row take it out of service; 0 means 3.
	HealthInterval time.Duration
	UnhealthyAfter int
	// StartupTimeout is how long an instance may take to answer /ping when
	// the variant does not say (ContainerStartupHealthCheckTimeoutInSeconds);
	// 0 means SageMaker's 8 minutes.
	StartupTimeout time.Duration
	// DownloadTimeout bounds fetching and unpacking model data when the
	// variant does not say (ModelDataDownloadTimeoutInSeconds); 0 means 1 h.
	DownloadTimeout time.Duration
	// MaxModelBytes bounds the unpacked model data; 0 means 100 GiB.
	MaxModelBytes int64

	pingOnce sync.Once
	ping     *http.Client
}

var _ ModelHost = (*LocalModelHost)(nil)
var _ ImageChecker = (*LocalModelHost)(nil)

const (
	servingPort = 8080
	// setupCredentialLife is how long the role credentials convoy itself
	// uses to set up a variant (volume key, model download) last. The
	// serving containers fetch theirs from the credentials endpoint.
	setupCredentialLife = 24 * time.Hour
	// pingTimeout is how long one health check may take (SageMaker: 2 s).
	pingTimeout = 2 * time.Second
	// stopGrace is how long a container has between SIGTERM and SIGKILL
	// when its instance is stopped.
	stopGrace = 3 * time.Second
)

// CheckImage tells whether an image is in the store and, when the runner
// has a Gate, whether the gate lets it run (which may unpack and scan it:
// once per image and vulnerability database).
func (h *LocalModelHost) CheckImage(ctx context.Context, image string) error {
	r := h.Runner
	img, err := r.Images.Resolve(image)
	if err != nil || r.Gate == nil {
		return err
	}
	rootfs, err := r.Images.RootFS(ctx, img)
	if err != nil {
		return fmt.Errorf("unpack image %s: %w", img.Ref, err)
	}
	return r.Gate.CheckImage(ctx, img, rootfs)
}

// Tidy removes the model data that deployments of an earlier convoy left
// behind; logs stay. Call it at start, before any endpoint starts.
func (h *LocalModelHost) Tidy() error {
	endpoints, err := os.ReadDir(h.Dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range endpoints {
		subs, _ := os.ReadDir(filepath.Join(h.Dir, e.Name()))
		for _, sub := range subs {
			if strings.HasPrefix(sub.Name(), "deploy-") {
				errs = append(errs, h.removeDeployment(filepath.Join(h.Dir, e.Name(), sub.Name())))
			}
		}
	}
	return errors.Join(errs...)
}

// removeDeployment deletes a deployment directory: first each variant's
// encrypted volume (unmounted, never deleted through), then the rest.
func (h *LocalModelHost) removeDeployment(dir string) error {
	var errs []error
	if vs := h.Runner.Volumes; vs != nil {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if n := e.Name(); !strings.HasSuffix(n, ".enc") && !strings.HasSuffix(n, ".img") {
				errs = append(errs, vs.Remove(filepath.Join(dir, n)))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// defaultEndpointVolumeGB sizes a variant's volume when its config names
// no VolumeSizeInGB (the image is sparse: only what is written is used).
const defaultEndpointVolumeGB = 30

func (h *LocalModelHost) pingClient() *http.Client {
	h.pingOnce.Do(func() {
		d := &net.Dialer{Timeout: pingTimeout, Control: executor.DialExposed}
		h.ping = &http.Client{Timeout: pingTimeout, Transport: &http.Transport{Proxy: nil, DialContext: d.DialContext, DisableKeepAlives: true}}
	})
	return h.ping
}

// localDeployment is a started Deployment.
type localDeployment struct {
	h       *LocalModelHost
	d       *Deployment
	dir     string // Dir/<endpoint>/deploy-<id>
	changed func()
	// ctx lives until Stop; the instance supervisors watch it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	variants []*localVariant
	stopped  bool
	stopOnce sync.Once
}

// localVariant is a variant's shared setup and its instances.
type localVariant struct {
	spec *DeployedVariant
	// job lacks ID, LogDir and the credentials variable, which are per
	// instance.
	job      executor.JobSpec
	logDir   string           // Dir/<endpoint>/logs/<variant>
	instance []*localInstance // in service, guarded by localDeployment.mu
}

type localInstance struct {
	id     string // i-<hex>; the executor job is ep-<hex>
	job    executor.Job
	addr   netip.AddrPort
	exited chan struct{} // closed when the container has exited; res is set
	res    executor.HostResult
	// revoke ends the instance's registration at the credentials endpoint.
	revoke func()
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Start implements ModelHost.
func (h *LocalModelHost) Start(ctx context.Context, d *Deployment, changed func()) (Running, error) {
	dep := &localDeployment{h: h, d: d, changed: changed,
		dir: filepath.Join(h.Dir, lower(d.Endpoint), "deploy-"+d.ID)}
	dep.ctx, dep.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for i := range d.Variants {
		dep.variants = append(dep.variants, &localVariant{spec: &d.Variants[i],
			logDir: filepath.Join(h.Dir, lower(d.Endpoint), "logs", d.Variants[i].VariantName)})
	}
	// The first variant that fails stops the others' starts: the
	// deployment fails either way, and a start can take minutes.
	sctx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for _, v := range dep.variants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := dep.startVariant(sctx, v); err != nil {
				once.Do(func() { first = err; abort(err) })
			}
		}()
	}
	wg.Wait()
	err := first
	if err == nil && ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	if err != nil {
		dep.Stop()
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	return dep, nil
}

// Variants implements Running.
func (dep *localDeployment) Variants() []runtime.Variant {
	dep.mu.Lock()
	defer dep.mu.Unlock()
	out := make([]runtime.Variant, 0, len(dep.variants))
	for _, v := range dep.variants {
		rv := runtime.Variant{Name: v.spec.VariantName, Weight: v.spec.Weight}
		for _, in := range v.instance {
			rv.Instances = append(rv.Instances, runtime.Instance{ID: in.id, Addr: in.addr})
		}
		out = append(out, rv)
	}
	return out
}

// Stop implements Running.
func (dep *localDeployment) Stop() {
	dep.stopOnce.Do(func() {
		dep.mu.Lock()
		dep.stopped = true
		dep.mu.Unlock()
		dep.cancel()
		dep.wg.Wait() // supervisors and replacements have returned
		var all []*localInstance
		dep.mu.Lock()
		for _, v := range dep.variants {
			all = append(all, v.instance...)
			v.instance = nil
		}
		dep.mu.Unlock()
		var wg sync.WaitGroup
		for _, in := range all {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dep.h.stopInstance(in)
			}()
		}
		wg.Wait()
		if err := dep.h.removeDeployment(dep.dir); err != nil {
			dep.h.Runner.Log.Error("remove an endpoint deployment's model data", "dir", dep.dir, "err", err)
		}
	})
}

// stopInstance stops a container, gracefully if it lets itself be.
func (h *LocalModelHost) stopInstance(in *localInstance) {
	in.job.Signal(syscall.SIGTERM)
	select {
	case <-in.exited:
	case <-time.After(stopGrace):
	}
	if err := in.job.Cleanup(); err != nil {
		h.Runner.Log.Error("clean up an endpoint instance", "instance", in.id, "err", err)
	}
	in.revoke()
}

// startVariant prepares a variant (image, model data, environment) and
// starts its instances.
func (dep *localDeployment) startVariant(ctx context.Context, v *localVariant) error {
	h, spec := dep.h, v.spec
	r := h.Runner
	img, err := r.Images.Resolve(spec.Image)
	if err != nil {
		return fmt.Errorf("variant %s: image %s of model %s cannot be used: %v", spec.VariantName, spec.Image, spec.ModelName, err)
	}
	spec.ResolvedImage, spec.Resolved = resolvedImage(spec.Image, img.Digest), nowEpoch()
	rootfs, err := r.Images.RootFS(ctx, img)
	if err != nil {
		return fmt.Errorf("variant %s: unpack image %s: %v", spec.VariantName, img.Ref, err)
	}
	if err := r.checkGate(ctx, img, rootfs); err != nil {
		return fmt.Errorf("variant %s: %v", spec.VariantName, err)
	}
	uid, gid, err := imageUserIn(rootfs, img.Config.User)
	if err != nil {
		return fmt.Errorf("variant %s: image %s: %v", spec.VariantName, img.Ref, err)
	}

	var env envBuilder
	env.addList(img.Config.Env)
	env.addMap(spec.Environment)
	s3c := (*s3.Client)(nil)
	var kc *kms.Client
	if spec.RoleARN != "" {
		s3c, kc = r.roleClients(spec.Role, sessionName("SageMaker-"+spec.ModelName), setupCredentialLife)
		if !spec.NetworkIsolation {
			if err := r.checkCredentialsEndpoint(); err != nil {
				return fmt.Errorf("variant %s: %v", spec.VariantName, err)
			}
			// Each instance registers at start (startInstance).
			for _, k := range credentialVars {
				env.del(k)
			}
		}
	}
	// The model data lives on the variant's encrypted volume (keyed by the
	// endpoint config's KmsKeyId through the model's role, or by a key held
	// only in memory), which goes with the deployment.
	if err := os.MkdirAll(dep.dir, 0o700); err != nil {
		return fmt.Errorf("variant %s: %v", spec.VariantName, err)
	}
	vj := &jobRun{r: r, job: &Job{Name: dep.d.Endpoint, ARN: "endpoint/" + lower(dep.d.Endpoint) + "/" + spec.VariantName}, dir: dep.dir,
		log: r.Log.With("endpoint", dep.d.Endpoint, "variant", spec.VariantName)}
	size := spec.VolumeSizeInGB
	if size == 0 {
		size = defaultEndpointVolumeGB
	}
	if spec.KmsKeyId != "" && kc == nil {
		return fmt.Errorf("variant %s: the endpoint config's KmsKeyId needs the model's ExecutionRoleArn to use it", spec.VariantName)
	}
	if reason, ok := vj.mountVolumeAt(ctx, spec.VariantName, spec.KmsKeyId, size, kc); !ok {
		return fmt.Errorf("variant %s: %s", spec.VariantName, strings.TrimPrefix(strings.TrimPrefix(reason, "ClientError: "), "InternalServerError: "))
	}
	vdir := vj.work
	model, config := filepath.Join(vdir, "model"), filepath.Join(vdir, "config")
	for _, d := range []string{model, config} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("variant %s: %v", spec.VariantName, err)
		}
	}
	if !spec.NetworkIsolation {
		env.addList([]string{"AWS_DEFAULT_REGION=" + r.Region, "AWS_REGION=" + r.Region,
			"AWS_ENDPOINT_URL=https://" + executor.ContainerAddr(r.Listen).String()})
		if len(r.CAPEM) > 0 {
			if err := os.WriteFile(filepath.Join(config, caFile), r.CAPEM, 0o644); err != nil {
				return err
			}
			env.set("AWS_CA_BUNDLE", "/opt/ml/input/config/"+caFile)
		}
	}
	if spec.ModelDataUrl != "" {
		if err := h.fetchModel(ctx, s3c, spec, model); err != nil {
			return err
		}
	}
	if uid != 0 || gid != 0 {
		if err := chownTree(vdir, uid, gid); err != nil {
			return fmt.Errorf("variant %s: %v", spec.VariantName, err)
		}
	}
	// The directories above were made under convoy's umask (0077).
	for _, d := range []string{vdir, model, config} {
		os.Chmod(d, 0o755)
	}

	v.job = executor.JobSpec{
		Hosts: 1, RootFS: rootfs, Args: serveArgs(img.Config), Env: env.list(),
		WorkDir: img.Config.WorkingDir, UID: uid, GID: gid,
		Mounts: func(string) []executor.Mount {
			return []executor.Mount{
				{Source: model, Destination: "/opt/ml/model", ReadOnly: true},
				{Source: config, Destination: "/opt/ml/input/config", ReadOnly: true},
			}
		},
		Network: executor.Endpoint, Allow: []netip.AddrPort{r.Listen},
		Expose: []uint16{servingPort},
	}
	if spec.RoleARN != "" {
		v.job.Credentials = r.CredentialsAddr
	}
	if spec.NetworkIsolation {
		v.job.Network, v.job.Allow, v.job.Credentials = executor.Isolated, nil, netip.AddrPort{}
	}
	ictx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range spec.InstanceCount {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, err := dep.startInstance(ictx, v)
			if err != nil {
				once.Do(func() { first = err; abort(err) })
				return
			}
			dep.mu.Lock()
			v.instance = append(v.instance, in)
			dep.mu.Unlock()
			dep.supervise(v, in)
		}()
	}
	wg.Wait()
	return first
}

// failure is a FailureReason: a sentence for people, capitalized and
// punctuated as SageMaker writes its reasons, which is why it is not made
// with fmt.Errorf.
type failure string

func (f failure) Error() string { return string(f) }

func failuref(format string, args ...any) error { return failure(fmt.Sprintf(format, args...)) }

// resolvedImage is the image reference pinned to its digest.
func resolvedImage(image, digest string) string {
	repo := image
	if i := strings.Index(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	return repo + "@" + digest
}

// serveArgs is what SageMaker runs in an inference container: the image's
// ENTRYPOINT with the single argument "serve" (which replaces its CMD).
func serveArgs(cfg images.ImageConfig) []string {
	return append(append([]string{}, cfg.Entrypoint...), "serve")
}

// fetchModel streams the model data from the object store into dir,
// unpacking it on the way.
func (h *LocalModelHost) fetchModel(ctx context.Context, s3c *s3.Client, spec *DeployedVariant, dir string) error {
	timeout := time.Duration(spec.DownloadTimeout) * time.Second
	if timeout == 0 {
		timeout = h.DownloadTimeout
	}
	if timeout == 0 {
		timeout = time.Hour
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m := modelDataRE.FindStringSubmatch(spec.ModelDataUrl)
	if m == nil {
		return fmt.Errorf("variant %s: ModelDataUrl %q is not s3://bucket/key", spec.VariantName, spec.ModelDataUrl)
	}
	bucket, key := m[1], m[2]
	obj, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return failuref("Failed to download model data for variant %s from URL %q with role %s: %s. Please ensure that there is an object at the URL and that the role passed to CreateModel may read it (s3:GetObject, and kms:Decrypt for its key)",
			spec.VariantName, spec.ModelDataUrl, spec.RoleARN, s3Error(err))
	}
	defer obj.Body.Close()
	max := h.MaxModelBytes
	if max == 0 {
		max = 100 << 30
	}
	if err := extractModel(ctx, obj.Body, dir, max); err != nil {
		if errors.Is(err, errModelData) {
			return fmt.Errorf("ClientError: model data %s of variant %s cannot be used: %v", spec.ModelDataUrl, spec.VariantName, err)
		}
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("variant %s: fetching and unpacking %s took longer than ModelDataDownloadTimeoutInSeconds (%s)", spec.VariantName, spec.ModelDataUrl, timeout)
		}
		return fmt.Errorf("variant %s: fetch model data %s: %v", spec.VariantName, spec.ModelDataUrl, err)
	}
	return nil
}

// startInstance starts one container of v and waits until it answers /ping.
func (dep *localDeployment) startInstance(ctx context.Context, v *localVariant) (*localInstance, error) {
	h, spec := dep.h, v.spec
	hexID := randomHex(8)
	in := &localInstance{id: "i-" + hexID, exited: make(chan struct{}), revoke: func() {}}
	js := v.job
	js.ID = "ep-" + hexID
	js.LogDir = filepath.Join(v.logDir, in.id)
	if js.Credentials.IsValid() {
		// Until revoked: an endpoint has no end of its own.
		uri, revoke, err := h.Runner.registerCredentials(spec.Role, sessionName("SageMaker-"+spec.ModelName), time.Time{})
		if err != nil {
			return nil, fmt.Errorf("variant %s: %v", spec.VariantName, err)
		}
		in.revoke = revoke
		js.Env = append(slices.Clone(js.Env), relativeURIVar+"="+uri)
	}
	job, err := h.Runner.Executor.Start(ctx, js)
	if err != nil {
		in.revoke()
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, fmt.Errorf("variant %s: start a container: %v", spec.VariantName, err)
	}
	in.job = job
	in.addr = netip.AddrPortFrom(job.Addrs()[executor.HostName(0)], servingPort)
	go func() {
		res, err := job.Wait(context.Background())
		if err == nil && len(res) > 0 {
			in.res = res[0]
		}
		close(in.exited)
	}()
	h.Runner.Log.Info("endpoint instance started", "endpoint", dep.d.Endpoint, "variant", spec.VariantName, "instance", in.id, "addr", in.addr)
	if err := h.waitHealthy(ctx, dep.d.Endpoint, spec, in); err != nil {
		h.stopInstance(in)
		return nil, err
	}
	return in, nil
}

// waitHealthy polls GET /ping until it answers 200, the container exits,
// or the startup timeout passes.
func (h *LocalModelHost) waitHealthy(ctx context.Context, endpoint string, spec *DeployedVariant, in *localInstance) error {
	timeout := time.Duration(spec.StartupTimeout) * time.Second
	if timeout == 0 {
		timeout = h.StartupTimeout
	}
	if timeout == 0 {
		timeout = 8 * time.Minute
	}
	interval := h.PingInterval
	if interval == 0 {
		interval = 200 * time.Millisecond
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	last := "no answer"
	for {
		err := h.checkHealth(ctx, in)
		if err == nil {
			return nil
		}
		last = err.Error()
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-in.exited:
			how := fmt.Sprintf("exit code %d", in.res.ExitCode)
			if in.res.Signal != "" {
				how += " (" + in.res.Signal + ")"
			}
			if in.res.Err != nil {
				how = in.res.Err.Error()
			}
			return failuref("The primary container for production variant %s did not pass the ping health check: it exited with %s. See log stream %s/%s of log group %s%s",
				spec.VariantName, how, spec.VariantName, in.id, runtime.LogGroup(endpoint), logTail(filepath.Join(h.Dir, lower(endpoint), "logs", spec.VariantName, in.id, "algo-1.log")))
		case <-deadline.C:
			return failuref("The primary container for production variant %s did not pass the ping health check within %s (last: %s). Please check CloudWatch logs for this endpoint: log stream %s/%s of log group %s",
				spec.VariantName, timeout, last, spec.VariantName, in.id, runtime.LogGroup(endpoint))
		case <-time.After(interval):
		}
	}
}

// checkHealth sends one GET /ping to in; nil means it answered 200 in time.
func (h *LocalModelHost) checkHealth(ctx context.Context, in *localInstance) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+in.addr.String()+"/ping", nil)
	if err != nil {
		return err
	}
	resp, err := h.pingClient().Do(req)
	if err != nil {
		return errors.New("no answer")
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New("status " + resp.Status)
	}
	return nil
}

// outOfService returns why in, an instance in service, must be replaced:
// it exited, or it failed UnhealthyAfter health checks in a row. It
// returns "" when ctx is done first.
func (dep *localDeployment) outOfService(ctx context.Context, in *localInstance) string {
	h := dep.h
	interval, limit := h.HealthInterval, h.UnhealthyAfter
	if interval == 0 {
		interval = 5 * time.Second
	}
	if limit == 0 {
		limit = 3
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	failed := 0
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-in.exited:
			how := fmt.Sprintf("exited with code %d", in.res.ExitCode)
			if in.res.Signal != "" {
				how += " (" + in.res.Signal + ")"
			}
			return how
		case <-tick.C:
		}
		err := h.checkHealth(ctx, in)
		switch {
		case err == nil:
			failed = 0
		case ctx.Err() != nil:
			return ""
		default:
			failed++
			if failed >= limit {
				return fmt.Sprintf("failed %d health checks in a row (GET /ping: %v)", failed, err)
			}
		}
	}
}

// logTail quotes the end of a log for a FailureReason.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const n = 300
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	s := strings.TrimSpace(strings.ToValidUTF8(string(b), "?"))
	if s == "" {
		return ""
	}
	return "; it wrote: " + s
}

// supervise replaces in when it exits or stops answering its health checks
// while the deployment runs. Called
// once per instance in service; returns at once, the watching goes on in
// the background until Stop.
func (dep *localDeployment) supervise(v *localVariant, in *localInstance) {
	dep.mu.Lock()
	defer dep.mu.Unlock()
	if dep.stopped {
		return
	}
	dep.wg.Add(1)
	go func() {
		defer dep.wg.Done()
		log := dep.h.Runner.Log.With("endpoint", dep.d.Endpoint, "variant", v.spec.VariantName)
		for {
			why := dep.outOfService(dep.ctx, in)
			if why == "" {
				return // Stop stops in
			}
			log.Warn("endpoint instance out of service; replacing it", "instance", in.id, "reason", why)
			dep.mu.Lock()
			for i, x := range v.instance {
				if x == in {
					v.instance = append(v.instance[:i], v.instance[i+1:]...)
					break
				}
			}
			dep.mu.Unlock()
			dep.changed()
			dep.h.stopInstance(in)
			backoff := time.Second
			for {
				select {
				case <-dep.ctx.Done():
					return
				case <-time.After(backoff):
				}
				next, err := dep.startInstance(dep.ctx, v)
				if err == nil {
					in = next
					break
				}
				if dep.ctx.Err() != nil {
					return
				}
				log.Warn("replacing an endpoint instance failed; retrying", "err", err, "retry_in", 2*backoff)
				backoff = min(2*backoff, time.Minute)
			}
			dep.mu.Lock()
			if dep.stopped {
				dep.mu.Unlock()
				dep.h.stopInstance(in)
				return
			}
			v.instance = append(v.instance, in)
			dep.mu.Unlock()
			log.Info("endpoint instance replaced", "instance", in.id)
			dep.changed()
		}
	}()
}
