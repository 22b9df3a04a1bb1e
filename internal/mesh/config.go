package mesh

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"convoy/internal/tlsconf"
)

// Fixed ports of an agent in its host's network namespace. They sit in
// 1021–1022, the range RFC 4727 sets aside for experiments, which no
// training framework uses. A container may bind low ports (the executor
// lowers ip_unprivileged_port_start), but the agent binds them before the
// container starts, so it cannot take them over.
const (
	// TunnelPort is where an agent accepts its peers' tunnels, on the
	// host's own address.
	TunnelPort uint16 = 1021
	// RedirectPort is where an agent accepts the host's own connections to
	// its peers, on 127.0.0.1, redirected there by the host's nftables
	// rules.
	RedirectPort uint16 = 1022
)

// AgentConfig is what an agent is told about its host. The supervisor
// writes it to agent.json in the host's private directory; the host's
// certificate arrives separately, on the agent's standard input (see
// RunAgent), because it is issued for the key the agent generates.
type AgentConfig struct {
	Job     string                `json:"job"`
	Host    string                `json:"host"`
	Addr    netip.Addr            `json:"addr"`
	Subnet  netip.Prefix          `json:"subnet"`
	Peers   map[string]netip.Addr `json:"peers"` // every host, this one included
	Profile tlsconf.Profile       `json:"profile"`
	// JobLog is the host's log file (what the job's owner reads), to which
	// the agent appends what the owner should know.
	JobLog string `json:"job_log"`
}

// validate checks a configuration as an agent reads it.
func (c *AgentConfig) validate() error {
	if !validJob.MatchString(c.Job) || !validHost.MatchString(c.Host) {
		return fmt.Errorf("agent config: bad job %q or host %q", c.Job, c.Host)
	}
	if !c.Addr.Is4() || !c.Subnet.Addr().Is4() || !c.Subnet.Contains(c.Addr) {
		return fmt.Errorf("agent config: address %s is not an IPv4 address in %s", c.Addr, c.Subnet)
	}
	if c.Peers[c.Host] != c.Addr {
		return fmt.Errorf("agent config: peers must list %s at %s", c.Host, c.Addr)
	}
	if len(c.Peers) < 2 {
		return fmt.Errorf("agent config: %d host(s), inter-node encryption needs two or more", len(c.Peers))
	}
	seen := map[netip.Addr]bool{}
	for h, a := range c.Peers {
		if !validHost.MatchString(h) || !c.Subnet.Contains(a) || seen[a] {
			return fmt.Errorf("agent config: bad peer %s at %s", h, a)
		}
		seen[a] = true
	}
	if _, err := tlsconf.ParseProfile(string(c.Profile)); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	return nil
}

// others returns the peers other than this host, sorted by name.
func (c *AgentConfig) others() []string {
	var out []string
	for h := range c.Peers {
		if h != c.Host {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, compareHosts)
	return out
}

// compareHosts orders algo-2 before algo-10.
func compareHosts(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

func readConfig(path string) (*AgentConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	var c AgentConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("parse agent config %s: %w", path, err)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}
