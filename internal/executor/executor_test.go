package executor

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestValidate(t *testing.T) {
	ok := JobSpec{ID: "job-1", Hosts: 2, RootFS: "/img", Args: []string{"train"}, LogDir: "/logs"}
	ap := netip.MustParseAddrPort
	tests := []struct {
		name   string
		change func(*JobSpec)
		err    string // "" for valid
	}{
		{"minimal", func(*JobSpec) {}, ""},
		{"upper case id", func(s *JobSpec) { s.ID = "Job" }, "job id"},
		{"id too long", func(s *JobSpec) { s.ID = strings.Repeat("a", 64) }, "job id"},
		{"no hosts", func(s *JobSpec) { s.Hosts = 0 }, "hosts"},
		{"too many hosts", func(s *JobSpec) { s.Hosts = MaxHosts + 1 }, "hosts"},
		{"relative rootfs", func(s *JobSpec) { s.RootFS = "img" }, "rootfs"},
		{"comma in rootfs", func(s *JobSpec) { s.RootFS = "/a,b" }, "rootfs"},
		{"no args", func(s *JobSpec) { s.Args = nil }, "no process"},
		{"relative workdir", func(s *JobSpec) { s.WorkDir = "code" }, "workdir"},
		{"no log dir", func(s *JobSpec) { s.LogDir = "" }, "log dir"},
		{"negative memory", func(s *JobSpec) { s.MemoryBytes = -1 }, "negative"},
		{"allow when isolated", func(s *JobSpec) { s.Allow = []netip.AddrPort{ap("127.0.0.1:1")} }, "endpoint policy"},
		{"endpoint", func(s *JobSpec) {
			s.Network = Endpoint
			s.Allow = []netip.AddrPort{ap("127.0.0.1:4443"), ap("192.0.2.9:443"), ap("[::ffff:127.0.0.2]:80")}
		}, ""},
		{"ipv6 endpoint", func(s *JobSpec) { s.Network = Endpoint; s.Allow = []netip.AddrPort{ap("[::1]:1")} }, "IPv4"},
		{"port zero", func(s *JobSpec) { s.Network = Endpoint; s.Allow = []netip.AddrPort{ap("127.0.0.1:0")} }, "IPv4"},
		{"loopback port twice", func(s *JobSpec) {
			s.Network = Endpoint
			s.Allow = []netip.AddrPort{ap("127.0.0.1:80"), ap("127.0.0.2:80")}
		}, "same port"},
		{"credentials", func(s *JobSpec) {
			s.Network = Endpoint
			s.Allow = []netip.AddrPort{ap("127.0.0.1:4443"), ap("192.0.2.9:80")}
			s.Credentials = ap("[::ffff:127.0.0.1]:39000")
		}, ""},
		{"credentials when isolated", func(s *JobSpec) { s.Credentials = ap("127.0.0.1:39000") }, "endpoint policy"},
		{"credentials not loopback", func(s *JobSpec) {
			s.Network = Endpoint
			s.Credentials = ap("192.0.2.9:80")
		}, "loopback"},
		{"credentials port zero", func(s *JobSpec) { s.Network = Endpoint; s.Credentials = ap("127.0.0.1:0") }, "loopback"},
		{"credentials ipv6", func(s *JobSpec) { s.Network = Endpoint; s.Credentials = ap("[::1]:39000") }, "IPv4"},
		{"loopback port 80 with credentials", func(s *JobSpec) {
			s.Network = Endpoint
			s.Allow = []netip.AddrPort{ap("127.0.0.1:80")}
			s.Credentials = ap("127.0.0.1:39000")
		}, "credentials endpoint"},
		{"unknown policy", func(s *JobSpec) { s.Network = 7 }, "policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.change(&s)
			got, err := s.validate()
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("error %v, want one containing %q", err, tt.err)
			}
			if err == nil && got.WorkDir == "" {
				t.Error("workdir not defaulted")
			}
			if got.Credentials.Addr().Is4In6() {
				t.Errorf("credentials %s not unmapped", got.Credentials)
			}
			for _, a := range got.Allow {
				if a.Addr().Is4In6() {
					t.Errorf("%s not unmapped", a)
				}
			}
		})
	}
}

func TestValidMount(t *testing.T) {
	for _, tt := range []struct {
		dst string
		ok  bool
	}{
		{"/opt/ml/input", true}, {"/opt/ml/model", true}, {"/procfoo", true},
		{"/", false}, {"/proc", false}, {"/proc/sys", false}, {"/dev/shm", false},
		{"/sys", false}, {"/etc/hosts", false}, {"/etc/resolv.conf", false}, {"relative", false},
	} {
		err := validMount(Mount{Source: "/src", Destination: tt.dst})
		if (err == nil) != tt.ok {
			t.Errorf("%s: err %v, want ok=%v", tt.dst, err, tt.ok)
		}
	}
}

func TestContainerAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:4443":        "169.254.170.2:4443",
		"127.9.9.9:80":          "169.254.170.2:80",
		"[::ffff:127.0.0.1]:80": "169.254.170.2:80",
		"192.0.2.9:443":         "192.0.2.9:443",
	} {
		if got := ContainerAddr(netip.MustParseAddrPort(in)); got.String() != want {
			t.Errorf("ContainerAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestSignalName(t *testing.T) {
	for code, want := range map[int]string{0: "", 1: "", 128: "", 137: "SIGKILL", 143: "SIGTERM", 160: ""} {
		if got := signalName(code); got != want {
			t.Errorf("signalName(%d) = %q, want %q", code, got, want)
		}
	}
}

func TestSubnetAddresses(t *testing.T) {
	p := subnetOf(7)
	if p.String() != "10.213.7.0/24" || gatewayOf(p).String() != "10.213.7.1" ||
		hostAddrOf(p, 0).String() != "10.213.7.2" || hostAddrOf(p, MaxHosts-1).String() != "10.213.7.254" {
		t.Errorf("subnet %s gw %s hosts %s…%s", p, gatewayOf(p), hostAddrOf(p, 0), hostAddrOf(p, MaxHosts-1))
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{`/a/b`: "/a/b", `/a\040b`: "/a b", `/x\134y`: `/x\y`, `/end\04`: `/end\04`} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOCISpecSecurity(t *testing.T) {
	s, err := JobSpec{ID: "j", Hosts: 1, RootFS: "/img", Args: []string{"train"}, LogDir: "/l", MemoryBytes: 1 << 30, CPUs: 1.5}.validate()
	if err != nil {
		t.Fatal(err)
	}
	hc := hostConfig{host: "algo-1", netns: "/state/netns", etcHosts: "/e/h", etcName: "/e/n", resolv: "/e/r",
		mounts:  []Mount{{Source: "/m/sub", Destination: "/opt/ml/input/data"}, {Source: "/m", Destination: "/opt/ml/input", ReadOnly: true}},
		cgroups: CgroupSupport{Version: 2, Memory: true, CPU: true, Pids: true}}
	sp := ociSpec(s, hc)
	p := sp.Process
	if !p.NoNewPrivileges || p.Terminal || p.User.UID != 0 {
		t.Errorf("process %+v", p)
	}
	c := p.Capabilities
	if n := len(c.Bounding) + len(c.Effective) + len(c.Permitted) + len(c.Inheritable) + len(c.Ambient); n != 0 {
		t.Errorf("%d capabilities granted", n)
	}
	if !sp.Root.Readonly || sp.Hostname != "algo-1" {
		t.Errorf("root %+v hostname %q", sp.Root, sp.Hostname)
	}
	var ns []specs.LinuxNamespaceType
	for _, n := range sp.Linux.Namespaces {
		ns = append(ns, n.Type)
		if n.Type == specs.NetworkNamespace && n.Path != "/state/netns" {
			t.Errorf("netns path %q", n.Path)
		}
	}
	for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace, specs.CgroupNamespace} {
		if !slices.Contains(ns, want) {
			t.Errorf("no %s namespace", want)
		}
	}
	dests := map[string]specs.Mount{}
	var order []string
	for _, m := range sp.Mounts {
		dests[m.Destination] = m
		order = append(order, m.Destination)
	}
	for _, d := range []string{"/proc", "/dev", "/tmp", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/sys"} {
		if _, ok := dests[d]; !ok {
			t.Errorf("no %s mount", d)
		}
	}
	if !slices.Contains(dests["/opt/ml/input"].Options, "ro") || slices.Contains(dests["/opt/ml/input/data"].Options, "ro") {
		t.Errorf("read-only flags: %v / %v", dests["/opt/ml/input"].Options, dests["/opt/ml/input/data"].Options)
	}
	if slices.Index(order, "/opt/ml/input") > slices.Index(order, "/opt/ml/input/data") {
		t.Errorf("child mount before its parent: %v", order)
	}
	for _, d := range []string{"/etc/hosts", "/sys"} {
		if !slices.Contains(dests[d].Options, "ro") {
			t.Errorf("%s writable", d)
		}
	}
	r := sp.Linux.Resources
	if r.Memory == nil || *r.Memory.Limit != 1<<30 || *r.Memory.Swap != 1<<30 || r.CPU == nil || *r.CPU.Quota != 150000 || r.Pids == nil {
		t.Errorf("resources %+v", r)
	}
	if len(r.Devices) != 1 || r.Devices[0].Allow {
		t.Errorf("devices %+v", r.Devices)
	}
	var denied []string
	for _, sc := range sp.Linux.Seccomp.Syscalls {
		denied = append(denied, sc.Names...)
	}
	for _, call := range []string{"unshare", "clone", "clone3", "mount", "bpf", "keyctl", "io_uring_setup", "init_module"} {
		if !slices.Contains(denied, call) {
			t.Errorf("seccomp lets %s through", call)
		}
	}
	if sp.Linux.Seccomp.DefaultAction != specs.ActAllow {
		t.Errorf("seccomp default %s", sp.Linux.Seccomp.DefaultAction)
	}

	// Limits the machine cannot apply are left out rather than failing.
	hc.cgroups = CgroupSupport{}
	if r := ociSpec(s, hc).Linux.Resources; r.Memory != nil || r.CPU != nil || r.Pids != nil {
		t.Errorf("limits without controllers: %+v", r)
	}
}
