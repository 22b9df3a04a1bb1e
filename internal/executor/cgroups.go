package executor

import (
	"bufio"
	"bytes"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CgroupSupport says which per-host limits the local executor can apply.
// runc places each container's cgroup under runc's own (v1) or beside
// convoy's (v2); a controller that is not there is skipped with a warning
// rather than failing the job.
type CgroupSupport struct {
	Version           int // 1 or 2; 0 when no cgroup hierarchy was found
	Memory, CPU, Pids bool
}

func (c CgroupSupport) String() string {
	var on []string
	for _, x := range []struct {
		name string
		ok   bool
	}{{"memory", c.Memory}, {"cpu", c.CPU}, {"pids", c.Pids}} {
		if x.ok {
			on = append(on, x.name)
		}
	}
	return "v" + strconv.Itoa(c.Version) + " [" + strings.Join(on, " ") + "]"
}

const cgroupRoot = "/sys/fs/cgroup"

func detectCgroups() CgroupSupport {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return CgroupSupport{}
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return detectCgroup2()
	}
	exists := func(p string) bool { _, err := os.Stat(path.Join(cgroupRoot, p)); return err == nil }
	c := CgroupSupport{
		Memory: exists("memory/memory.limit_in_bytes"),
		CPU:    exists("cpu/cpu.cfs_quota_us"),
		Pids:   exists("pids/cgroup.procs"),
	}
	if c.Memory || c.CPU || c.Pids {
		c.Version = 1
	}
	return c
}

// detectCgroup2 reads the controllers available where runc will create the
// container's cgroup: beside the caller's own (runc's default for a
// relative cgroups path), that is, the controllers of the parent.
func detectCgroup2() CgroupSupport {
	c := CgroupSupport{Version: 2}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return c
	}
	parent := "/"
	sc := bufio.NewScanner(bytes.NewReader(own))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			parent = path.Dir(p)
		}
	}
	ctrl, err := os.ReadFile(path.Join(cgroupRoot, parent, "cgroup.controllers"))
	if err != nil {
		return c
	}
	for _, f := range strings.Fields(string(ctrl)) {
		switch f {
		case "memory":
			c.Memory = true
		case "cpu":
			c.CPU = true
		case "pids":
			c.Pids = true
		}
	}
	return c
}
