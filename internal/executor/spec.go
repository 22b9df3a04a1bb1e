package executor

import (
	"runtime"
	"slices"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ociVersion is what config.json declares: the oldest spec version with
// every field used here, so that Debian's runc (1.1, spec 1.0.2) reads it.
const ociVersion = "1.0.2"

// pidsLimit bounds the tasks (threads count) of one host: high enough for a
// data loader with many workers and threads, low enough to stop a fork bomb.
const pidsLimit = 32768

// nofile is the open-file limit of a host: 65536, or convoy's own hard
// limit if lower, because raising it needs CAP_SYS_RESOURCE, which convoy
// may lack (in a container, say).
func nofile() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	return min(65536, rl.Max)
}

// cpuPeriod is the CFS period for the CPU quota, in microseconds.
const cpuPeriod = 100000

// hostConfig is what ociSpec needs besides the JobSpec.
type hostConfig struct {
	host     string
	netns    string // path of the host's network namespace
	etcHosts string // files bind-mounted read-only over /etc/…
	etcName  string
	resolv   string
	mounts   []Mount
	cgroups  CgroupSupport
	shmBytes int64
}

// hostEnv is the job's environment plus the host's own variables.
func hostEnv(s JobSpec, host string) []string {
	if s.HostEnv == nil {
		return s.Env
	}
	return append(append([]string(nil), s.Env...), s.HostEnv(host)...)
}

// ociSpec builds the container configuration of one host.
//
// The process runs without any capability and with no_new_privs, so root in
// the container is an ordinary user that happens to own its files; the root
// filesystem is read-only (writable: /tmp, /dev/shm and the caller's
// mounts); the container has its own pid, ipc, uts, mount and cgroup
// namespaces and joins the network namespace prepared for it; a seccomp
// filter refuses the system calls that widen the kernel's attack surface
// beyond what training code uses (see seccompProfile).
func ociSpec(s JobSpec, hc hostConfig) *specs.Spec {
	noCaps := &specs.LinuxCapabilities{
		Bounding: []string{}, Effective: []string{}, Inheritable: []string{},
		Permitted: []string{}, Ambient: []string{},
	}
	shm := []string{"nosuid", "noexec", "nodev", "mode=1777"}
	if hc.shmBytes > 0 {
		shm = append(shm, "size="+strconv.FormatInt(hc.shmBytes, 10))
	}
	ro := []string{"bind", "ro", "nosuid", "nodev", "noexec"}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: shm},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		{Destination: "/etc/hosts", Type: "bind", Source: hc.etcHosts, Options: ro},
		{Destination: "/etc/hostname", Type: "bind", Source: hc.etcName, Options: ro},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: hc.resolv, Options: ro},
	}
	user := slices.Clone(hc.mounts)
	// Parents before children, whatever order the caller used.
	slices.SortStableFunc(user, func(a, b Mount) int { return len(a.Destination) - len(b.Destination) })
	for _, m := range user {
		opts := []string{"bind", "nosuid", "nodev"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		}
		mounts = append(mounts, specs.Mount{Destination: m.Destination, Type: "bind", Source: m.Source, Options: opts})
	}

	// Deny every device; runc adds back the standard ones (null, zero,
	// full, random, urandom, tty, pts).
	res := &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}}
	if s.MemoryBytes > 0 && hc.cgroups.Memory {
		limit := s.MemoryBytes
		res.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit} // swap = memory: no swap
	}
	if s.CPUs > 0 && hc.cgroups.CPU {
		quota := max(int64(s.CPUs*cpuPeriod), 1000)
		period := uint64(cpuPeriod)
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if hc.cgroups.Pids {
		res.Pids = &specs.LinuxPids{Limit: pidsLimit}
	}

	sp := &specs.Spec{
		Version: ociVersion,
		Process: &specs.Process{
			User:            specs.User{UID: s.UID, GID: s.GID},
			Args:            s.Args,
			Env:             hostEnv(s, hc.host),
			Cwd:             s.WorkDir,
			Capabilities:    noCaps,
			NoNewPrivileges: true,
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: nofile(), Soft: nofile()},
				{Type: "RLIMIT_CORE", Hard: 0, Soft: 0},
			},
		},
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Hostname: hc.host,
		Mounts:   mounts,
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.CgroupNamespace},
				{Type: specs.NetworkNamespace, Path: hc.netns},
			},
			Resources: res,
			// Root without CAP_NET_BIND_SERVICE may still serve on port 80.
			Sysctl: map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
				"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
				"/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	sp.Linux.Seccomp = seccompProfile()
	return sp
}

// seccompProfile allows every system call except those that a process
// without capabilities could still use to reach rarely hardened kernel code
// or to regain privileges: user namespaces (unshare, clone with
// CLONE_NEWUSER; clone3 reports ENOSYS so libc falls back to clone), keyrings,
// BPF, perf, userfaultfd, io_uring, the new mount API, and module, kexec and
// clock calls. A denylist rather than Docker's allowlist: training code
// (CUDA, NCCL, MPI) uses system calls an allowlist would have to chase.
// Names that this libseccomp or kernel does not know are skipped by runc.
func seccompProfile() *specs.LinuxSeccomp {
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	var arches []specs.Arch
	switch runtime.GOARCH {
	case "amd64":
		arches = []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		arches = []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: arches,
		Syscalls: []specs.LinuxSyscall{
			{
				Action: specs.ActErrno, ErrnoRet: &eperm,
				Names: []string{
					"unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot",
					"open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
					"keyctl", "add_key", "request_key",
					"bpf", "perf_event_open", "userfaultfd",
					"io_uring_setup", "io_uring_enter", "io_uring_register",
					"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
					"open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
					"acct", "swapon", "swapoff", "reboot", "syslog", "vhangup", "quotactl", "quotactl_fd",
					"settimeofday", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "adjtimex", "stime",
					"iopl", "ioperm", "uselib", "nfsservctl", "fanotify_init",
				},
			},
			{
				// clone(flags, …) with CLONE_NEWUSER: arg 0 on every
				// architecture listed above.
				Action: specs.ActErrno, ErrnoRet: &eperm, Names: []string{"clone"},
				Args: []specs.LinuxSeccompArg{{Index: 0, Value: unix.CLONE_NEWUSER, ValueTwo: unix.CLONE_NEWUSER, Op: specs.OpMaskedEqual}},
			},
			{Action: specs.ActErrno, ErrnoRet: &enosys, Names: []string{"clone3"}},
		},
	}
}
