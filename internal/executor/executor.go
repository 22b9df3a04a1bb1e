// Package executor runs the hosts of one SageMaker-contract job (algo-1 …
// algo-N) as containers, behind the Executor interface so that a Kubernetes
// backend can replace the local one.
//
// The local backend (Local) runs each host as an OCI container with runc,
// each in its own network namespace, attached by a veth pair to a per-job
// Linux bridge in the caller's network namespace, with a per-job nftables
// table that decides what the hosts may reach. See Local for the details.
//
// Written by hand on top of netlink, netns, nftables and the OCI
// runtime-spec types: containerd, CNI and libcontainer would each bring a
// daemon, plugin binaries or a cgo build for what is here a few hundred lines
// of explicit, auditable setup.
package executor

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// Executor starts jobs.
type Executor interface {
	Start(ctx context.Context, spec JobSpec) (Job, error)
}

// NetworkPolicy says what the hosts of a job may reach besides each other.
type NetworkPolicy int

const (
	// Isolated: the job's hosts reach each other and nothing else, not even
	// the caller's namespace (SageMaker's EnableNetworkIsolation).
	Isolated NetworkPolicy = iota
	// Endpoint: the job's hosts plus the TCP endpoints in JobSpec.Allow.
	Endpoint
)

func (p NetworkPolicy) String() string {
	switch p {
	case Isolated:
		return "isolated"
	case Endpoint:
		return "endpoint"
	}
	return "NetworkPolicy(" + strconv.Itoa(int(p)) + ")"
}

// MaxHosts is the most hosts one job can have: each job gets one /24.
const MaxHosts = 253

// JobSpec describes one job. The zero value of every optional field is
// useful: root user, working directory "/", no limits, no mounts.
type JobSpec struct {
	// ID is unique among the running jobs, 1–63 characters of [a-z0-9-]. It
	// names the containers and the state directory; kernel objects get
	// short names hashed from it.
	ID string
	// Hosts is the number of hosts, named algo-1 … algo-N.
	Hosts int
	// RootFS is the unpacked image root filesystem. It is never written: each
	// host sees it through its own overlay, mounted read-only.
	RootFS string
	// Args is the process to run (image Entrypoint + ["train"]). Args[0] is
	// looked up in the PATH of Env when it is not absolute.
	Args []string
	Env  []string
	// HostEnv, if set, adds variables for one host (SM_CURRENT_HOST).
	HostEnv func(host string) []string
	WorkDir string // must exist in the image or be a mount; "" means "/"
	// UID and GID run the process as the image user; zero is root in the
	// container, which has no capabilities either way.
	UID, GID uint32
	// Mounts returns the per-host bind mounts (created by the caller), e.g.
	// /opt/ml/input, /opt/ml/model, /opt/ml/output. May be nil.
	Mounts func(host string) []Mount
	// Network and Allow: see NetworkPolicy and ContainerAddr.
	Network NetworkPolicy
	Allow   []netip.AddrPort
	// Credentials, if set, is a loopback address:port of the caller's
	// namespace that the hosts reach as ServiceAddr:80 (CredentialsPort):
	// the container credentials endpoint that
	// AWS_CONTAINER_CREDENTIALS_RELATIVE_URI points the AWS SDKs to. Only
	// with the Endpoint policy; no loopback endpoint of Allow may then use
	// port 80.
	Credentials netip.AddrPort
	// MemoryBytes and CPUs are cgroup limits per host; zero means none. They
	// are applied where the cgroup controllers are available (see
	// Local.Cgroups) and logged as skipped otherwise.
	MemoryBytes int64
	CPUs        float64
	// LogDir receives LogDir/<host>.log: the raw stdout and stderr of the
	// host's process, appended, byte for byte (no timestamps or prefixes),
	// followed by runc's own error message if the container could not start.
	LogDir string
	// Expose lists TCP ports of the hosts that the caller's namespace may
	// connect to (a model server's 8080), from sockets marked with
	// ExposeMark (DialExposed). Nothing else may enter a host.
	Expose []uint16
	// HostSetup, if set, runs once per host after every host's network
	// namespace and link exist and before any container starts (inter-node
	// encryption installs itself here). Start fails if it fails. The
	// returned stop, if not nil, runs at Cleanup before the namespaces go.
	HostSetup func(ctx context.Context, h HostNet) (stop func(), err error)
}

// HostNet is one host's network, as HostSetup sees it.
type HostNet struct {
	Job   string // JobSpec.ID
	Host  string // algo-1 …
	Netns string // path of the host's network namespace (a bind-mounted nsfs file)
	// Dir is a 0700 directory of this host outside its container's view,
	// removed with the job: a place for the host's keys.
	Dir    string
	Addr   netip.Addr   // the host's eth0 address
	Subnet netip.Prefix // the job's network; the bridge holds its first address
	// Peers maps every host of the job, this one included, to its address.
	Peers map[string]netip.Addr
}

// Mount is a bind mount into a host's container.
type Mount struct {
	Source, Destination string
	ReadOnly            bool
}

// Job is a started job.
type Job interface {
	// Hosts names the hosts: "algo-1", ….
	Hosts() []string
	// Wait returns when every host has exited, one result per host in
	// Hosts order, or when ctx is done (the job keeps running).
	Wait(ctx context.Context) ([]HostResult, error)
	// Signal sends sig to every host's process (PID 1 of its container; as
	// PID 1 it only sees signals it handles, except SIGKILL).
	Signal(sig syscall.Signal) error
	// Cleanup stops what still runs and removes every container, namespace,
	// link, firewall rule and state file of the job. Idempotent.
	Cleanup() error
	// BridgeName is the Linux bridge in the caller's network namespace that
	// carries all traffic between the hosts, for capture (tshark -i). "" if
	// the backend has none.
	BridgeName() string
	// Addrs maps each host to the address the caller dials to reach its
	// Expose ports.
	Addrs() map[string]netip.Addr
}

// HostResult is how one host ended.
type HostResult struct {
	Host     string
	ExitCode int
	// Signal names the signal when ExitCode is 128+n and n is a signal
	// (runc, like a shell, reports death by signal n as exit status 128+n,
	// so a process that calls exit(137) reads as killed too).
	Signal string
	// Err is set when the container could not be run or waited for (runc
	// failed, the process binary was missing …), as opposed to a process
	// that ran and exited non-zero.
	Err error
}

// ServiceAddr is where a job's hosts reach an allowed endpoint that listens
// on the caller's loopback (127.0.0.1:port is served as ServiceAddr:port).
// It is the address SageMaker and ECS use for the container credentials
// endpoint, so it is fixed and known before a job starts: a certificate that
// containers must verify should carry it as an IP SAN.
var ServiceAddr = netip.AddrFrom4([4]byte{169, 254, 170, 2})

// CredentialsPort is the port of ServiceAddr where the hosts reach
// JobSpec.Credentials: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is resolved
// against http://169.254.170.2, port 80.
const CredentialsPort = 80

// ContainerAddr returns the address the hosts of a job dial to reach the
// allowed endpoint ap: ServiceAddr:port for a loopback address, ap itself
// otherwise.
func ContainerAddr(ap netip.AddrPort) netip.AddrPort {
	if ap.Addr().Unmap().IsLoopback() {
		return netip.AddrPortFrom(ServiceAddr, ap.Port())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// HostName returns the name of host i (0-based): algo-(i+1).
func HostName(i int) string { return "algo-" + strconv.Itoa(i+1) }

var validID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// validate checks a spec and returns it normalized.
func (s JobSpec) validate() (JobSpec, error) {
	if !validID.MatchString(s.ID) {
		return s, fmt.Errorf("job id %q: want 1-63 characters of [a-z0-9-]", s.ID)
	}
	if s.Hosts < 1 || s.Hosts > MaxHosts {
		return s, fmt.Errorf("job %s: hosts %d: want 1..%d", s.ID, s.Hosts, MaxHosts)
	}
	if !filepath.IsAbs(s.RootFS) {
		return s, fmt.Errorf("job %s: rootfs %q is not an absolute path", s.ID, s.RootFS)
	}
	if strings.ContainsAny(s.RootFS, ",:") {
		// overlayfs option syntax has no escaping for these.
		return s, fmt.Errorf("job %s: rootfs %q contains ',' or ':'", s.ID, s.RootFS)
	}
	if len(s.Args) == 0 || s.Args[0] == "" {
		return s, fmt.Errorf("job %s: no process to run", s.ID)
	}
	if s.WorkDir == "" {
		s.WorkDir = "/"
	}
	if !filepath.IsAbs(s.WorkDir) {
		return s, fmt.Errorf("job %s: workdir %q is not absolute", s.ID, s.WorkDir)
	}
	if s.LogDir == "" || !filepath.IsAbs(s.LogDir) {
		return s, fmt.Errorf("job %s: log dir %q is not an absolute path", s.ID, s.LogDir)
	}
	for _, p := range s.Expose {
		if p == 0 {
			return s, fmt.Errorf("job %s: expose port 0", s.ID)
		}
	}
	if s.MemoryBytes < 0 || s.CPUs < 0 {
		return s, fmt.Errorf("job %s: negative limit", s.ID)
	}
	switch s.Network {
	case Isolated:
		if len(s.Allow) > 0 {
			return s, fmt.Errorf("job %s: allowed endpoints need the endpoint policy", s.ID)
		}
		if s.Credentials.IsValid() {
			return s, fmt.Errorf("job %s: a credentials endpoint needs the endpoint policy: isolated hosts reach nothing, so give them no credentials endpoint", s.ID)
		}
	case Endpoint:
		ports := map[uint16]netip.Addr{}
		if c := s.Credentials; c.IsValid() {
			a := c.Addr().Unmap()
			if !a.Is4() || !a.IsLoopback() || c.Port() == 0 {
				return s, fmt.Errorf("job %s: credentials endpoint %s: want an IPv4 loopback address and a port", s.ID, c)
			}
			s.Credentials = netip.AddrPortFrom(a, c.Port())
		}
		allow := make([]netip.AddrPort, 0, len(s.Allow))
		for _, ap := range s.Allow {
			a := ap.Addr().Unmap()
			if !a.Is4() || ap.Port() == 0 || a.IsUnspecified() {
				return s, fmt.Errorf("job %s: allowed endpoint %s: want an IPv4 address and a port", s.ID, ap)
			}
			if a.IsLoopback() {
				// Loopback endpoints share ServiceAddr, so their ports must differ.
				if prev, ok := ports[ap.Port()]; ok && prev != a {
					return s, fmt.Errorf("job %s: allowed endpoints %s and %s: same port on two loopback addresses", s.ID, prev, a)
				}
				if ap.Port() == CredentialsPort && s.Credentials.IsValid() {
					return s, fmt.Errorf("job %s: allowed endpoint %s: port %d of %s is the credentials endpoint's; listen on another port", s.ID, ap, CredentialsPort, ServiceAddr)
				}
				ports[ap.Port()] = a
			}
			allow = append(allow, netip.AddrPortFrom(a, ap.Port()))
		}
		s.Allow = allow
	default:
		return s, fmt.Errorf("job %s: unknown network policy %d", s.ID, s.Network)
	}
	return s, nil
}

// validMount checks a caller's mount.
func validMount(m Mount) error {
	if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Destination) {
		return fmt.Errorf("mount %s -> %s: paths must be absolute", m.Source, m.Destination)
	}
	d := filepath.Clean(m.Destination)
	for _, reserved := range []string{"/", "/proc", "/dev", "/sys", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"} {
		if d == reserved || (reserved != "/" && strings.HasPrefix(d, reserved+"/")) {
			return fmt.Errorf("mount %s -> %s: destination is reserved", m.Source, m.Destination)
		}
	}
	return nil
}

// signalName names the signal behind a 128+n exit status, or "".
func signalName(exitCode int) string {
	n := exitCode - 128
	if n < 1 || n > 31 {
		return ""
	}
	return unixSignalName(syscall.Signal(n))
}
