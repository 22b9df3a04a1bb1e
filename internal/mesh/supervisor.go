package mesh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"convoy/internal/executor"
	"convoy/internal/fsutil"
	"convoy/internal/pki"
	"convoy/internal/tlsconf"
)

// Supervisor starts and watches the agents of distributed jobs. It runs
// in convoy; the agents are processes of their own (see RunAgent).
type Supervisor struct {
	// Command runs an agent: convoy's binary and its mesh-agent command.
	// The supervisor adds "--config FILE" and runs it, with nsenter, in
	// the host's network namespace.
	Command []string
	// Env is added to the agent's environment, which is otherwise convoy's
	// (GODEBUG=fips140=… included).
	Env     []string
	Profile tlsconf.Profile
	Log     *slog.Logger
	// StartTimeout bounds an agent's start; zero means 30 s.
	StartTimeout time.Duration
}

// Check reports whether agents can be started here.
func (s *Supervisor) Check() error {
	if len(s.Command) == 0 {
		return errors.New("inter-node encryption: no agent command configured")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		return fmt.Errorf("inter-node encryption needs nsenter (apt-get install util-linux): %w", err)
	}
	if _, err := exec.LookPath(s.Command[0]); err != nil {
		return fmt.Errorf("inter-node encryption: agent command: %w", err)
	}
	return nil
}

// JobOptions describe the mesh of one job.
type JobOptions struct {
	// Lifetime is how long the hosts' certificates are valid: the longest
	// the job may run. No certificate outlives it, and none can be issued
	// after the job has started, because the job's CA is gone by then.
	Lifetime time.Duration
	// JobLog returns the log file of a host, which the job's owner reads.
	JobLog func(host string) string
	// OnFailure is called, once per agent, when an agent exits on its own:
	// the host's connections to its peers can no longer be carried, and
	// the caller should stop the job.
	OnFailure func(*TunnelError)
}

// TunnelError tells that a host's agent exited while its job ran.
type TunnelError struct {
	Host string
	// Exit is how the process ended ("signal: killed", "exit status 1").
	Exit string
	// Detail is the last error the agent logged, if any.
	Detail string
}

func (e *TunnelError) Error() string {
	msg := fmt.Sprintf("inter-node encryption tunnel of %s exited (%s)", e.Host, e.Exit)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Job is the mesh of one distributed job: its CA, while hosts are being
// set up, and its agents.
type Job struct {
	s *Supervisor
	o JobOptions

	mu     sync.Mutex
	ca     *pki.CA
	issued int
	closed bool
	procs  map[string]*process
}

// NewJob prepares the mesh of a job; its HostSetup goes into the job's
// executor.JobSpec.
func (s *Supervisor) NewJob(o JobOptions) *Job {
	return &Job{s: s, o: o}
}

// Close discards the job's CA if it is still held (a start that failed
// before every host was set up). Stopping the agents is the business of
// the functions HostSetup returned.
func (j *Job) Close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.ca, j.closed = nil, true
}

// HostSetup installs inter-node encryption in one host's network
// namespace, before its container starts: the rules, then the agent,
// whose certificate it issues from the job's CA. Once every host has its
// certificate, the CA's key is dropped. The returned function stops the
// agent.
func (j *Job) HostSetup(ctx context.Context, h executor.HostNet) (stop func(), err error) {
	var others []string
	for host := range h.Peers {
		if host != h.Host {
			others = append(others, host)
		}
	}
	if len(others) == 0 {
		return nil, errors.New("inter-node encryption needs two hosts or more")
	}
	ca, err := j.takeCA(h.Job)
	if err != nil {
		return nil, err
	}
	r := rules{self: h.Addr, subnet: h.Subnet}
	slices.SortFunc(others, compareHosts)
	for _, o := range others {
		r.peers = append(r.peers, h.Peers[o])
	}
	if err := r.install(h.Netns); err != nil {
		return nil, err
	}
	cfg := AgentConfig{
		Job: h.Job, Host: h.Host, Addr: h.Addr, Subnet: h.Subnet, Peers: h.Peers,
		Profile: j.s.Profile, JobLog: j.o.JobLog(h.Host),
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(h.Dir, "agent.json")
	if err := fsutil.WriteFileAtomic(cfgPath, data, 0o600); err != nil {
		return nil, fmt.Errorf("write agent config: %w", err)
	}
	timeout := j.s.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p, err := j.s.start(sctx, h, cfgPath, cfg.JobLog, j.o.OnFailure)
	if err != nil {
		os.Remove(cfgPath)
		return nil, err
	}
	if err := p.certify(sctx, ca, h, j.o.Lifetime); err != nil {
		p.stop()
		os.Remove(cfgPath)
		return nil, fmt.Errorf("start mesh agent: %w", err)
	}
	j.mu.Lock()
	j.issued++
	if j.issued == len(h.Peers) {
		j.ca = nil // every host has its certificate: no other may ever be issued
	}
	if j.procs == nil {
		j.procs = map[string]*process{}
	}
	j.procs[h.Host] = p
	j.mu.Unlock()
	p.watch()
	return func() {
		p.stop()
		os.Remove(cfgPath)
	}, nil
}

// process returns the agent of host, if started.
func (j *Job) process(host string) *process {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.procs[host]
}

// takeCA returns the job's CA, creating it for the first host.
func (j *Job) takeCA(job string) (*pki.CA, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil, errors.New("inter-node encryption: the job's mesh was closed")
	}
	if j.ca == nil && j.issued == 0 {
		if j.o.Lifetime <= 0 {
			return nil, errors.New("inter-node encryption: certificate lifetime must be positive")
		}
		ca, err := pki.NewEphemeralCA("convoy mesh CA of job "+job, j.o.Lifetime)
		if err != nil {
			return nil, err
		}
		j.ca = ca
	}
	if j.ca == nil {
		return nil, errors.New("inter-node encryption: the job's CA is gone; every host already has its certificate")
	}
	return j.ca, nil
}

// process is a running agent.
type process struct {
	s       *Supervisor
	host    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stdout  *bufio.Reader
	jobLog  string
	fail    func(*TunnelError)
	log     *slog.Logger
	exited  chan struct{}
	waitErr error

	mu         sync.Mutex
	stopping   bool
	lastError  string
	stderrDone chan struct{}
}

// start runs an agent in the host's network namespace.
func (s *Supervisor) start(ctx context.Context, h executor.HostNet, cfgPath, jobLog string, fail func(*TunnelError)) (*process, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	args := append([]string{"--net=" + h.Netns, "--"}, s.Command...)
	args = append(args, "--config", cfgPath)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Dir = "/"
	// Its own process group, so that a Ctrl-C meant for convoy does not
	// reach it (convoy stops it with the job); and killed with convoy.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	log := s.Log.With("job", h.Job, "host", h.Host)
	p := &process{s: s, host: h.Host, cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout), jobLog: jobLog,
		fail: fail, log: log, exited: make(chan struct{}), stderrDone: make(chan struct{})}
	if err := startOnSpawner(cmd); err != nil {
		return nil, fmt.Errorf("start mesh agent: %w", err)
	}
	go p.forwardLog(stderr)
	go func() {
		<-p.stderrDone
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	log.Info("mesh agent started", "pid", cmd.Process.Pid)
	return p, nil
}

// certify answers the agent's public key with its certificate and waits
// until it is ready.
func (p *process) certify(ctx context.Context, ca *pki.CA, h executor.HostNet, lifetime time.Duration) error {
	var km keyMessage
	if err := p.receive(ctx, &km); err != nil {
		return err
	}
	pub, err := x509.ParsePKIXPublicKey(km.PublicKey)
	if err != nil {
		return fmt.Errorf("agent's public key: %w", err)
	}
	cert, err := ca.Issue(pki.LeafRequest{
		CommonName: h.Host + " of job " + h.Job,
		Names:      []string{h.Addr.String()},
		URIs:       []*url.URL{IdentityURI(h.Job, h.Host)},
		Purpose:    pki.PeerAuth,
		Lifetime:   lifetime,
		Key:        pub,
	})
	if err != nil {
		return err
	}
	msg, err := json.Marshal(certMessage{Chain: cert.Certificate, Root: ca.Chain[len(ca.Chain)-1]})
	if err != nil {
		return err
	}
	if _, err := p.stdin.Write(append(msg, '\n')); err != nil {
		return fmt.Errorf("send the host certificate: %w", err)
	}
	var rm readyMessage
	if err := p.receive(ctx, &rm); err != nil {
		return err
	}
	if !rm.Ready {
		return fmt.Errorf("agent: %s", rm.Error)
	}
	return nil
}

// receive reads one message from the agent, or fails when it exits or
// ctx ends.
func (p *process) receive(ctx context.Context, v any) error {
	type result struct {
		line []byte
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := p.stdout.ReadBytes('\n')
		ch <- result{line, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			<-p.exited
			return fmt.Errorf("agent exited (%v)%s", p.waitErr, p.detail())
		}
		return json.Unmarshal(r.line, v)
	case <-ctx.Done():
		return fmt.Errorf("agent did not answer: %w", ctx.Err())
	}
}

func (p *process) detail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lastError == "" {
		return ""
	}
	return ": " + p.lastError
}

// watch reports the agent's exit, unless it was stopped.
func (p *process) watch() {
	go func() {
		<-p.exited
		p.mu.Lock()
		stopping := p.stopping
		last := p.lastError
		p.mu.Unlock()
		if stopping {
			return
		}
		exit := "exit status 0"
		if p.waitErr != nil {
			exit = p.waitErr.Error()
		}
		te := &TunnelError{Host: p.host, Exit: exit, Detail: last}
		p.log.Error("mesh agent exited while its job runs", "err", te)
		if jl, err := openJobLog(p.jobLog); err == nil {
			jl.printf("%s; stopping the job so that no traffic can flow unprotected.", te)
			jl.close()
		}
		if p.fail != nil {
			p.fail(te)
		}
	}()
}

// stop ends the agent: its lifeline first, then SIGKILL if it lingers.
func (p *process) stop() {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// forwardLog re-emits the agent's log records (JSON lines on its stderr)
// through convoy's logger, and remembers the last error.
func (p *process) forwardLog(r io.Reader) {
	defer close(p.stderrDone)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		level, msg, attrs := parseLogLine(sc.Bytes())
		if level >= slog.LevelError {
			p.mu.Lock()
			p.lastError = msg
			if e, ok := attrErr(attrs); ok {
				p.lastError += ": " + e
			}
			p.mu.Unlock()
		}
		p.log.Log(context.Background(), level, "mesh agent: "+msg, attrs...)
	}
}

// parseLogLine reads a slog JSON record; anything else (a panic's trace)
// is logged as a warning.
func parseLogLine(line []byte) (slog.Level, string, []any) {
	var rec map[string]any
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber() // counts stay integers
	if err := dec.Decode(&rec); err != nil {
		return slog.LevelWarn, strings.TrimSpace(string(line)), nil
	}
	var level slog.Level
	if s, ok := rec["level"].(string); ok {
		level.UnmarshalText([]byte(s))
	}
	msg, _ := rec["msg"].(string)
	var keys []string
	for k := range rec {
		switch k {
		case "time", "level", "msg", "job", "host":
		default:
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var attrs []any
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, rec[k]))
	}
	return level, msg, attrs
}

func attrErr(attrs []any) (string, bool) {
	for _, a := range attrs {
		if at, ok := a.(slog.Attr); ok && at.Key == "err" {
			return fmt.Sprint(at.Value.Any()), true
		}
	}
	return "", false
}

// Agents are started from one goroutine locked to its OS thread for the
// life of the process: Pdeathsig fires when the thread that forked the
// child exits, not the process, and the Go runtime ends threads whose
// goroutines exit while locked (the executor's namespace code does).
var spawner struct {
	once sync.Once
	req  chan spawnRequest
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

func startOnSpawner(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.req = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: see above
			for r := range spawner.req {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawner.req <- spawnRequest{cmd, done}
	return <-done
}

// KillStrays kills the agents whose configuration lies under dir (the
// executor's state directory) and returns how many it found. An agent
// dies with the convoy that started it (Pdeathsig, and the end of its
// lifeline), so this finds nothing unless that failed; convoy calls it at
// start anyway, before reaping what an earlier run left, so that no agent
// outlives its job's network namespace.
func KillStrays(dir string) (int, error) {
	dir = filepath.Clean(dir) + string(filepath.Separator)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // gone
		}
		args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		i := slices.Index(args, "mesh-agent")
		if i < 0 || i+2 >= len(args) || args[i+1] != "--config" || !strings.HasPrefix(filepath.Clean(args[i+2]), dir) {
			continue
		}
		n++
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill stray mesh agent %d: %w", pid, err))
		}
	}
	return n, errors.Join(errs...)
}
