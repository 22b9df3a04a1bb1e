package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"convoy/internal/fsutil"

	"golang.org/x/sys/unix"
)

// Local runs jobs on this machine with runc. It needs root.
//
// Network: each job gets a bridge cv<hash> in the caller's network
// namespace with 10.213.X.1/24 (X free in the namespace and among this
// state directory's jobs); each host gets a network namespace (a file under
// the job's state directory), a veth pair with cv<hash>-<n> on the bridge and
// eth0 = 10.213.X.(n+1)/24 inside, IPv6 off, a default route via the bridge
// only under the Endpoint policy, and /etc/hosts naming algo-1 … algo-N. The
// per-job nftables table (see firewall) is in place before any link exists.
//
// State: stateDir/runc is runc's --root; stateDir/jobs/<id>/job.json lists
// every kernel object of a job before it is created, so that Cleanup and
// Reap remove exactly what a job made, even after a crash.
type Local struct {
	stateDir string
	runc     runc
	log      *slog.Logger
	cgroups  CgroupSupport

	mu      sync.Mutex
	jobs    map[string]*localJob // started by this process and not cleaned up
	subnets map[uint8]string     // third octet → job id, for every job on disk
}

var _ Executor = (*Local)(nil)

// NewLocal checks that runc is installed and that convoy runs as root, and
// prepares stateDir (runc state, bundles, network namespace files).
func NewLocal(stateDir string, log *slog.Logger) (*Local, error) {
	if log == nil {
		log = slog.Default()
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("local executor: needs root (namespaces, mounts, links, nftables)")
	}
	path, err := exec.LookPath("runc")
	if err != nil {
		return nil, fmt.Errorf("local executor: runc not found (apt-get install runc): %w", err)
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("local executor: %s --version: %w", path, err)
	}
	version, _, _ := strings.Cut(string(out), "\n")
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{abs, filepath.Join(abs, "runc"), filepath.Join(abs, "jobs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("local executor: %w", err)
		}
	}
	l := &Local{
		stateDir: abs,
		runc:     runc{path: path, root: filepath.Join(abs, "runc")},
		log:      log,
		cgroups:  detectCgroups(),
		jobs:     map[string]*localJob{},
		subnets:  map[uint8]string{},
	}
	ms, err := l.manifests()
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.Subnet.IsValid() {
			l.subnets[m.Subnet.Addr().As4()[2]] = m.ID
		}
	}
	log.Info("local executor ready", "runc", version, "state", abs, "cgroups", l.cgroups.String(), "jobs_on_disk", len(ms))
	return l, nil
}

// Cgroups reports which limits jobs get.
func (l *Local) Cgroups() CgroupSupport { return l.cgroups }

// manifest is what a job created, written before it is created.
type manifest struct {
	ID     string       `json:"id"`
	Subnet netip.Prefix `json:"subnet"`
	Bridge string       `json:"bridge"`
	Table  string       `json:"nftables_table"`
	Hosts  []hostState  `json:"hosts"`
}

type hostState struct {
	Name      string `json:"name"`
	Container string `json:"container"`
	Veth      string `json:"veth"`
	Dir       string `json:"dir"` // bundle: config.json, rootfs, netns, etc
}

func (l *Local) jobDir(id string) string { return filepath.Join(l.stateDir, "jobs", id) }

func (l *Local) manifests() ([]manifest, error) {
	entries, err := os.ReadDir(filepath.Join(l.stateDir, "jobs"))
	if err != nil {
		return nil, err
	}
	var out []manifest
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		m, err := l.readManifest(e.Name())
		if err != nil {
			l.log.Warn("unreadable job state", "job", e.Name(), "err", err)
			m = manifest{ID: e.Name()}
		}
		out = append(out, m)
	}
	return out, nil
}

func (l *Local) readManifest(id string) (manifest, error) {
	var m manifest
	data, err := os.ReadFile(filepath.Join(l.jobDir(id), "job.json"))
	if err != nil {
		return m, err
	}
	err = json.Unmarshal(data, &m)
	return m, err
}

// newManifest names everything of a job. Kernel names are hashed from the
// state directory and the id: bridge cv<8 hex> and veths cv<8 hex>-<n> fit
// IFNAMSIZ, and two convoy installations on one machine do not collide.
func (l *Local) newManifest(spec JobSpec) manifest {
	sum := sha256.Sum256([]byte(l.stateDir + "\x00" + spec.ID))
	h := hex.EncodeToString(sum[:4])
	m := manifest{ID: spec.ID, Bridge: "cv" + h, Table: "convoy-" + h + "-" + spec.ID}
	for i := range spec.Hosts {
		name := HostName(i)
		m.Hosts = append(m.Hosts, hostState{
			Name:      name,
			Container: spec.ID + "." + name,
			Veth:      "cv" + h + "-" + strconv.Itoa(i+1),
			Dir:       filepath.Join(l.jobDir(spec.ID), name),
		})
	}
	return m
}

// netLock serializes subnet allocation and bridge creation between convoy
// processes (and goroutines: flock conflicts between open files).
func netLock() (unlock func(), err error) {
	dir := "/run"
	if _, err := os.Stat(dir); err != nil {
		dir = os.TempDir()
	}
	f, err := os.OpenFile(filepath.Join(dir, "convoy-executor.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("network lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("network lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// allocSubnet picks a /24 of jobNet that is neither routed in the caller's
// namespace nor recorded for another job, starting at a hash of the id.
// Called with l.mu and the network lock held.
func (l *Local) allocSubnet(id string) (netip.Prefix, error) {
	used, err := usedSubnets()
	if err != nil {
		return netip.Prefix{}, err
	}
	sum := sha256.Sum256([]byte(id))
	start := int(sum[0])
	for k := range 254 {
		x := uint8(1 + (start+k)%254) // 1..254: .0 and .255 stay unused
		if _, taken := l.subnets[x]; !taken && !used[x] {
			l.subnets[x] = id
			return subnetOf(x), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /24 in %s", jobNet)
}

// Start sets up the job's network and starts every host. It returns when
// every container is running (its process started), or with an error after
// undoing what it made.
func (l *Local) Start(ctx context.Context, spec JobSpec) (Job, error) {
	t0 := time.Now()
	spec, err := spec.validate()
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(spec.RootFS); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("job %s: rootfs %s: not a directory", spec.ID, spec.RootFS)
	}
	mounts := make([][]Mount, spec.Hosts)
	if spec.Mounts != nil {
		for i := range spec.Hosts {
			mounts[i] = spec.Mounts(HostName(i))
			for _, m := range mounts[i] {
				if err := validMount(m); err != nil {
					return nil, fmt.Errorf("job %s: %s: %w", spec.ID, HostName(i), err)
				}
				if _, err := os.Stat(m.Source); err != nil {
					return nil, fmt.Errorf("job %s: %s: mount source: %w", spec.ID, HostName(i), err)
				}
			}
		}
	}
	if err := os.MkdirAll(spec.LogDir, 0o750); err != nil {
		return nil, fmt.Errorf("job %s: log dir: %w", spec.ID, err)
	}
	if spec.MemoryBytes > 0 && !l.cgroups.Memory {
		l.log.Warn("memory limit unavailable, running without it", "job", spec.ID, "cgroups", l.cgroups.String())
	}
	if spec.CPUs > 0 && !l.cgroups.CPU {
		l.log.Warn("cpu limit unavailable, running without it", "job", spec.ID, "cgroups", l.cgroups.String())
	}

	m := l.newManifest(spec)
	fw := &firewall{table: m.Table, bridge: m.Bridge, expose: spec.Expose}
	for _, ap := range spec.Allow {
		local, err := isLocalAddr(ap.Addr())
		if err != nil {
			return nil, err
		}
		switch {
		case ap.Addr().IsLoopback():
			fw.dnat = append(fw.dnat, dnat{port: ap.Port(), to: ap})
		case local:
			fw.local = append(fw.local, ap)
		default:
			fw.remote = append(fw.remote, ap)
		}
	}

	if spec.Credentials.IsValid() {
		fw.dnat = append(fw.dnat, dnat{port: CredentialsPort, to: spec.Credentials})
	}

	j := &localJob{l: l, spec: spec, done: make(chan struct{})}
	unlockNet, err := l.reserve(j, m)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", spec.ID, err)
	}
	m = j.m

	ok := false
	defer func() {
		if !ok {
			if err := j.Cleanup(); err != nil {
				l.log.Error("undo failed job start", "job", spec.ID, "err", err)
			}
		}
	}()
	fw.subnet = m.Subnet
	err = fw.install()
	var brIndex int
	if err == nil {
		brIndex, err = createBridge(bridgeConfig{
			name: m.Bridge, alias: "convoy job " + spec.ID, subnet: m.Subnet,
			localnet: len(fw.dnat) > 0, forward: len(fw.remote) > 0,
		})
	}
	unlockNet()
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", spec.ID, err)
	}
	l.warnNoForwarding(spec.ID, fw.remote)
	tNet := time.Now()

	for i := range spec.Hosts {
		h, err := l.prepareHost(spec, m, i, brIndex, mounts[i])
		if err != nil {
			return nil, fmt.Errorf("job %s: %s: %w", spec.ID, HostName(i), err)
		}
		j.hosts = append(j.hosts, h)
	}
	if spec.HostSetup != nil {
		if err := j.setupHosts(ctx); err != nil {
			return nil, fmt.Errorf("job %s: %w", spec.ID, err)
		}
	}
	tPrep := time.Now()
	for _, h := range j.hosts {
		if err := j.launch(h); err != nil {
			return nil, fmt.Errorf("job %s: %s: %w", spec.ID, h.name, err)
		}
	}
	go func() {
		for _, h := range j.hosts {
			<-h.done
		}
		close(j.done)
	}()
	if err := j.waitStarted(ctx); err != nil {
		return nil, fmt.Errorf("job %s: %w", spec.ID, err)
	}
	ok = true
	l.log.Info("job started", "job", spec.ID, "hosts", spec.Hosts, "subnet", m.Subnet, "bridge", m.Bridge,
		"policy", spec.Network.String(), "network_ms", tNet.Sub(t0).Milliseconds(),
		"prepare_ms", tPrep.Sub(tNet).Milliseconds(), "total_ms", time.Since(t0).Milliseconds())
	return j, nil
}

// reserve claims the job's id and subnet and records its manifest, so that
// from here on Cleanup and Reap know what to remove. It returns holding the
// network lock, to be released once the bridge has its address.
func (l *Local) reserve(j *localJob, m manifest) (unlockNet func(), err error) {
	unlockNet, err = netLock()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fail := func(err error) (func(), error) {
		if m.Subnet.IsValid() {
			delete(l.subnets, m.Subnet.Addr().As4()[2])
			os.RemoveAll(l.jobDir(m.ID))
		}
		unlockNet()
		return nil, err
	}
	if _, running := l.jobs[m.ID]; running {
		return fail(errors.New("already running"))
	}
	if _, err := os.Stat(l.jobDir(m.ID)); err == nil {
		return fail(errors.New("left over from an earlier run: Reap it"))
	}
	if m.Subnet, err = l.allocSubnet(m.ID); err != nil {
		return fail(err)
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(l.jobDir(m.ID), 0o700); err != nil {
		return fail(err)
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(l.jobDir(m.ID), "job.json"), data, 0o600); err != nil {
		return fail(err)
	}
	j.m = m
	l.jobs[m.ID] = j
	return unlockNet, nil
}

// warnNoForwarding logs when the route to a remote endpoint leaves through
// an interface that does not forward: replies would then never reach the
// job. The executor turns forwarding on for its bridges only.
func (l *Local) warnNoForwarding(id string, remote []netip.AddrPort) {
	for _, ap := range remote {
		dev, err := egressDevice(ap.Addr())
		if err != nil {
			l.log.Warn("no route to allowed endpoint", "job", id, "endpoint", ap, "err", err)
			continue
		}
		if v, err := os.ReadFile(ipv4Conf(dev, "forwarding")); err == nil && strings.TrimSpace(string(v)) != "1" {
			l.log.Warn("allowed endpoint is behind an interface without forwarding; set net.ipv4.conf."+dev+".forwarding=1",
				"job", id, "endpoint", ap, "interface", dev)
		}
	}
}

// prepareHost makes one host's bundle: /etc files, overlay root, network
// namespace and link, and config.json.
func (l *Local) prepareHost(spec JobSpec, m manifest, i, brIndex int, mounts []Mount) (*hostRun, error) {
	hs := m.Hosts[i]
	etc := filepath.Join(hs.Dir, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return nil, err
	}
	var hosts strings.Builder
	hosts.WriteString("127.0.0.1\tlocalhost\n")
	for k := range spec.Hosts {
		fmt.Fprintf(&hosts, "%s\t%s\n", hostAddrOf(m.Subnet, k), HostName(k))
	}
	files := map[string]string{
		"hosts":       hosts.String(),
		"hostname":    hs.Name + "\n",
		"resolv.conf": "# convoy: no DNS in a job network\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	if err := mountRootFS(spec.RootFS, hs.Dir); err != nil {
		return nil, err
	}
	nsPath := filepath.Join(hs.Dir, "netns")
	if err := newNetns(nsPath); err != nil {
		return nil, err
	}
	vc := vethConfig{
		name: hs.Veth, alias: "convoy job " + spec.ID + " " + hs.Name, bridge: brIndex,
		netns: nsPath, addr: hostAddrOf(m.Subnet, i),
	}
	if spec.Network == Endpoint {
		vc.gateway = gatewayOf(m.Subnet)
	}
	if err := createVeth(vc); err != nil {
		return nil, err
	}
	hc := hostConfig{
		host: hs.Name, netns: nsPath,
		etcHosts: filepath.Join(etc, "hosts"), etcName: filepath.Join(etc, "hostname"), resolv: filepath.Join(etc, "resolv.conf"),
		mounts: mounts, cgroups: l.cgroups,
	}
	if spec.MemoryBytes > 0 {
		hc.shmBytes = spec.MemoryBytes / 2
	}
	data, err := json.MarshalIndent(ociSpec(spec, hc), "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(hs.Dir, "config.json"), data, 0o600); err != nil {
		return nil, err
	}
	return &hostRun{name: hs.Name, cid: hs.Container, dir: hs.Dir, done: make(chan struct{})}, nil
}

// Reap removes what jobs left behind — containers, network namespaces,
// links, nftables tables, mounts and state — for every job of this state
// directory that is not in keep and not running in this process. Call it at
// start, after a crash, with the jobs the caller still tracks.
func (l *Local) Reap(keep map[string]bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	kept := func(id string) bool { _, running := l.jobs[id]; return keep[id] || running }
	ms, err := l.manifests()
	if err != nil {
		return fmt.Errorf("reap: %w", err)
	}
	byID := map[string]manifest{}
	for _, m := range ms {
		byID[m.ID] = m
	}
	// Containers without a state directory (a crash between runc's start
	// and anything else) are still named <job>.<host>.
	ids, err := l.runc.list(context.Background())
	if err != nil {
		return fmt.Errorf("reap: %w", err)
	}
	for _, cid := range ids {
		job, _, _ := strings.Cut(cid, ".")
		if m, ok := byID[job]; ok {
			if !hasContainer(m, cid) {
				m.Hosts = append(m.Hosts, hostState{Container: cid})
				byID[job] = m
			}
		} else {
			byID[job] = manifest{ID: job, Hosts: []hostState{{Container: cid}}}
		}
	}
	var errs []error
	for id, m := range byID {
		if kept(id) {
			continue
		}
		l.log.Info("reaping leftover job", "job", id, "bridge", m.Bridge, "hosts", len(m.Hosts))
		if err := l.teardown(m); err != nil {
			errs = append(errs, err)
			continue
		}
		if m.Subnet.IsValid() && l.subnets[m.Subnet.Addr().As4()[2]] == id {
			delete(l.subnets, m.Subnet.Addr().As4()[2])
		}
	}
	return errors.Join(errs...)
}

func hasContainer(m manifest, cid string) bool {
	for _, h := range m.Hosts {
		if h.Container == cid {
			return true
		}
	}
	return false
}

// teardown removes everything m lists, in an order that never leaves a host
// connected without its rules: containers, links, then the nftables table,
// then mounts and files. Each step tolerates what is already gone.
func (l *Local) teardown(m manifest) error {
	ctx := context.Background()
	var errs []error
	for _, h := range m.Hosts {
		if h.Container != "" {
			errs = append(errs, l.runc.forceDelete(ctx, h.Container))
		}
	}
	for _, h := range m.Hosts {
		if h.Veth != "" {
			errs = append(errs, deleteLink(h.Veth))
		}
	}
	if m.Bridge != "" {
		errs = append(errs, deleteLink(m.Bridge))
	}
	if m.Table != "" {
		errs = append(errs, deleteTable(m.Table))
	}
	if m.ID != "" && validID.MatchString(m.ID) {
		dir := l.jobDir(m.ID)
		if err := unmountUnder(dir); err != nil {
			errs = append(errs, err) // never RemoveAll through a mount
		} else if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down job %s: %w", m.ID, err)
	}
	return nil
}

// localJob is a job started by Local.
type localJob struct {
	l     *Local
	spec  JobSpec
	m     manifest
	hosts []*hostRun
	stops []func()      // from spec.HostSetup, run at Cleanup
	done  chan struct{} // closed when every host has exited

	cleanMu sync.Mutex
	cleaned bool
}

// hostRun is one host's runc process.
type hostRun struct {
	name, cid, dir string
	cmd            *exec.Cmd
	done           chan struct{} // closed when runc has exited; result is set
	result         HostResult
}

// exited reports whether the host's runc has exited, or was never launched
// (a Start that failed half-way).
func (h *hostRun) exited() bool {
	if h.cmd == nil {
		return true
	}
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// launch starts `runc run` in the foreground: it stays the parent of the
// container, forwards the process's output to the log file and exits with
// the process's status, which makes Wait a plain process wait.
func (j *localJob) launch(h *hostRun) error {
	logf, err := os.OpenFile(filepath.Join(j.spec.LogDir, h.name+".log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	cmd := j.l.runc.command("--log", filepath.Join(h.dir, "runc.log"), "--log-format", "json",
		"run", "--bundle", h.dir, "--pid-file", filepath.Join(h.dir, "pid"), h.cid)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C meant for convoy must not reach runc,
	// which would forward it to the training process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start runc: %w", err)
	}
	h.cmd = cmd
	go func() {
		err := cmd.Wait()
		logf.Close()
		h.result = hostResult(h, err)
		close(h.done)
	}()
	return nil
}

func hostResult(h *hostRun, waitErr error) HostResult {
	r := HostResult{Host: h.name}
	ps := h.cmd.ProcessState
	if ps == nil {
		r.ExitCode, r.Err = -1, fmt.Errorf("wait for runc: %w", waitErr)
		return r
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		r.ExitCode, r.Signal = -1, unixSignalName(ws.Signal())
		r.Err = fmt.Errorf("runc killed by %s", r.Signal)
		return r
	}
	r.ExitCode = ps.ExitCode()
	r.Signal = signalName(r.ExitCode)
	if r.ExitCode != 0 {
		if msg := lastError(filepath.Join(h.dir, "runc.log")); msg != "" {
			r.Err = errors.New(msg)
		}
	}
	return r
}

func unixSignalName(s syscall.Signal) string { return unix.SignalName(s) }

// waitStarted waits until every container's process has started (runc
// writes the pid file) or a runc has failed.
func (j *localJob) waitStarted(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, h := range j.hosts {
		pid := filepath.Join(h.dir, "pid")
		for {
			if _, err := os.Stat(pid); err == nil {
				break
			}
			if h.exited() {
				if _, err := os.Stat(pid); err == nil {
					break // started and already finished
				}
				if h.result.Err != nil {
					return fmt.Errorf("%s: %w", h.name, h.result.Err)
				}
				return fmt.Errorf("%s: runc exited with status %d before the container started (see %s)",
					h.name, h.result.ExitCode, filepath.Join(j.spec.LogDir, h.name+".log"))
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: waiting for the container to start: %w", h.name, ctx.Err())
			case <-tick.C:
			}
		}
	}
	return nil
}

func (j *localJob) Hosts() []string {
	names := make([]string, len(j.m.Hosts))
	for i, h := range j.m.Hosts {
		names[i] = h.Name
	}
	return names
}

func (j *localJob) BridgeName() string { return j.m.Bridge }

func (j *localJob) Addrs() map[string]netip.Addr {
	out := make(map[string]netip.Addr, len(j.m.Hosts))
	for i, h := range j.m.Hosts {
		out[h.Name] = hostAddrOf(j.m.Subnet, i)
	}
	return out
}

// setupHosts runs spec.HostSetup for every host, in order.
func (j *localJob) setupHosts(ctx context.Context) error {
	peers := j.Addrs()
	for i, hs := range j.m.Hosts {
		dir := filepath.Join(hs.Dir, "private")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		stop, err := j.spec.HostSetup(ctx, HostNet{
			Job: j.spec.ID, Host: hs.Name, Netns: filepath.Join(hs.Dir, "netns"), Dir: dir,
			Addr: hostAddrOf(j.m.Subnet, i), Subnet: j.m.Subnet, Peers: peers,
		})
		if err != nil {
			return fmt.Errorf("%s: host setup: %w", hs.Name, err)
		}
		if stop != nil {
			j.stops = append(j.stops, stop)
		}
	}
	return nil
}

func (j *localJob) Wait(ctx context.Context) ([]HostResult, error) {
	select {
	case <-j.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	out := make([]HostResult, len(j.hosts))
	for i, h := range j.hosts {
		out[i] = h.result
	}
	return out, nil
}

func (j *localJob) Signal(sig syscall.Signal) error {
	var wg sync.WaitGroup
	errs := make([]error, len(j.hosts))
	for i, h := range j.hosts {
		if h.exited() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := j.l.runc.kill(context.Background(), h.cid, int(sig)); err != nil {
				errs[i] = fmt.Errorf("%s: %w", h.name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (j *localJob) Cleanup() error {
	j.cleanMu.Lock()
	defer j.cleanMu.Unlock()
	if j.cleaned {
		return nil
	}
	if err := j.Signal(syscall.SIGKILL); err != nil {
		j.l.log.Warn("cleanup: kill", "job", j.m.ID, "err", err) // teardown deletes by force
	}
	for _, h := range j.hosts {
		if h.cmd == nil {
			continue
		}
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			// runc itself is stuck: kill it; teardown deletes the container.
			h.cmd.Process.Kill()
			<-h.done
		}
	}
	for _, stop := range j.stops {
		stop()
	}
	j.stops = nil
	if err := j.l.teardown(j.m); err != nil {
		return err
	}
	j.cleaned = true
	j.l.mu.Lock()
	if j.l.jobs[j.m.ID] == j {
		delete(j.l.jobs, j.m.ID)
	}
	if j.m.Subnet.IsValid() && j.l.subnets[j.m.Subnet.Addr().As4()[2]] == j.m.ID {
		delete(j.l.subnets, j.m.Subnet.Addr().As4()[2])
	}
	j.l.mu.Unlock()
	return nil
}
