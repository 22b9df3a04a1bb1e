// Package daemon wires convoy's parts into the embedded single-process
// deployment that `convoy up` runs: data directory, database, master key,
// PKI, IAM, and the HTTPS listener, then convoy.env for clients.
package daemon

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"convoy/internal/auth"
	"convoy/internal/credsvc"
	"convoy/internal/cwlogs"
	"convoy/internal/executor"
	"convoy/internal/fsutil"
	"convoy/internal/iam"
	"convoy/internal/images"
	"convoy/internal/kms"
	"convoy/internal/mesh"
	"convoy/internal/objectstore"
	"convoy/internal/pki"
	"convoy/internal/runtime"
	"convoy/internal/sagemaker"
	"convoy/internal/scan"
	"convoy/internal/sealbox"
	"convoy/internal/server"
	"convoy/internal/state"
	"convoy/internal/sts"
	"convoy/internal/tlsconf"
	"convoy/internal/volume"
)

// Options are `convoy up`'s settings.
type Options struct {
	DataDir string
	Listen  string
	Profile tlsconf.Profile
	FIPS    bool
	// FIPSListen, if set, adds a second HTTPS endpoint with the fips
	// profile (AWS's separate FIPS endpoints). It needs the FIPS module.
	FIPSListen string
	Region     string
	// CertLifetime is the lifetime of serving certificates convoy issues.
	CertLifetime time.Duration
	// ExtraNames are added to the serving certificate's SANs.
	ExtraNames []string
	// TLSCert/TLSKey serve a user's certificate instead of one from convoy's CA.
	TLSCert, TLSKey string
	// CACert/CAKey make convoy issue from a user's CA instead of its own.
	CACert, CAKey string
	// STSMinDuration overrides the shortest STS session (15 min), for tests.
	STSMinDuration time.Duration
	// StopGrace is how long a training container has between SIGTERM and
	// SIGKILL when its job is stopped (0: SageMaker's 120 s).
	StopGrace time.Duration
	// EndpointHealthInterval is the pause between health checks (GET /ping)
	// of an endpoint instance in service; three failed in a row replace it.
	// 0 means 5 s.
	EndpointHealthInterval time.Duration
	// ShutdownTimeout bounds how long in-flight requests may take to finish.
	ShutdownTimeout time.Duration
	// MaxConnections bounds the API connections open at once; 0 means
	// server.DefaultMaxConnections.
	MaxConnections int
	// RequireInternodeEncryption refuses jobs of more than one instance
	// that do not ask for inter-container traffic encryption.
	RequireInternodeEncryption bool
	// DenyImageSeverity refuses images with known vulnerabilities of this
	// severity or higher (internal/scan) to training and processing jobs
	// and endpoints. The zero value, scan.Unknown, refuses none; convoy up
	// defaults to scan.Critical.
	DenyImageSeverity scan.Severity

	Logger *slog.Logger
	Stdout io.Writer
}

// EnvFile is the name of the file, in the data directory, that tells clients
// how to reach convoy.
const EnvFile = "convoy.env"

// DefaultDataDir is $XDG_DATA_HOME/convoy or ~/.local/share/convoy.
func DefaultDataDir() string {
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "convoy")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "convoy-data"
	}
	return filepath.Join(home, ".local", "share", "convoy")
}

// Run starts convoy and serves until ctx is cancelled, then drains.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if o.FIPS {
		if !tlsconf.FIPSModuleEnabled() {
			return errors.New("--fips needs Go's FIPS 140-3 module: start convoy with GODEBUG=fips140=on (or fips140=only)")
		}
		o.Profile = tlsconf.FIPS
	}
	if o.FIPSListen != "" && !tlsconf.FIPSModuleEnabled() {
		return errors.New("--fips-listen needs Go's FIPS 140-3 module, or the endpoint would not be a FIPS endpoint: start convoy with GODEBUG=fips140=on (or fips140=only)")
	}
	// Everything convoy writes (database, WAL, objects) is for its eyes only;
	// files meant for clients (ca.pem) are chmod-ed explicitly.
	syscall.Umask(0o077)
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := os.Chmod(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("restrict data dir: %w", err)
	}
	unlock, err := lockDataDir(o.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	// A stale convoy.env from the previous run must not tell anyone we are up.
	envPath := filepath.Join(o.DataDir, EnvFile)
	if err := os.Remove(envPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}

	box, err := sealbox.LoadOrCreate(filepath.Join(mkdir(o.DataDir, "keys"), "master.key"))
	if err != nil {
		return err
	}
	db, err := state.OpenSQLite(ctx, filepath.Join(o.DataDir, "convoy.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	ids, err := iam.Open(ctx, db, box)
	if err != nil {
		return err
	}
	admin, err := ids.EnsureAdmin(ctx)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (choose another with --listen, or :0 for any free port)", o.Listen, err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr)
	names := serverNames(addr, o.ExtraNames)
	var fipsLn net.Listener
	if o.FIPSListen != "" {
		if fipsLn, err = net.Listen("tcp", o.FIPSListen); err != nil {
			return fmt.Errorf("listen on %s: %w (choose another with --fips-listen)", o.FIPSListen, err)
		}
		defer fipsLn.Close()
		names = serverNames(fipsLn.Addr().(*net.TCPAddr), names)
	}

	pkiDir := mkdir(o.DataDir, "pki")
	certs, caBundle, err := certSource(o, pkiDir, names)
	if err != nil {
		return err
	}

	tokens := sts.New(ids, box, log)
	if o.STSMinDuration > 0 {
		tokens.MinDuration = o.STSMinDuration
	}
	srv := server.New(server.Config{
		TLS:    tlsconf.Server(o.Profile, certs.GetCertificate, tlsconf.ServerOptions{}),
		Logger: log,
		Auth:   auth.New(ids, tokens),
		// Over all endpoints (the FIPS one included).
		MaxConnections: o.MaxConnections,
	})
	srv.Handle("iam", iam.NewAPI(ids, log))
	srv.Handle("sts", tokens)
	keys, err := kms.Open(ctx, db, box, ids, o.Region, log)
	if err != nil {
		return err
	}
	srv.Handle("kms", keys)
	objects, err := objectstore.Open(ctx, objectstore.Config{
		Dir: mkdir(o.DataDir, "objects"), DB: db, Box: box, KMS: keys, IAM: ids, Region: o.Region, Log: log,
		VirtualHosts: virtualHosts(o.ExtraNames), Registry: srv.Registry(),
	})
	if err != nil {
		return err
	}
	srv.Handle("s3", objects)
	// Containers fetch their role's credentials over plain HTTP from a
	// loopback listener, which each job's network reaches as
	// 169.254.170.2:80 (see internal/credsvc for why plain HTTP).
	credsLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on 127.0.0.1 for the container credentials endpoint: %w", err)
	}
	defer credsLn.Close()
	containerCreds := credsvc.New(tokens, log)
	if o.STSMinDuration > 0 {
		containerCreds.MinLifetime = o.STSMinDuration
	}
	containerCreds.RegisterMetrics(srv.Registry())
	credsAddr := netip.MustParseAddrPort(credsLn.Addr().String())
	log.Info("container credentials endpoint", "listen", credsAddr, "containers_reach", netip.AddrPortFrom(executor.ServiceAddr, executor.CredentialsPort))
	runner := trainingRunner(o, addr, caBundle, tokens, containerCreds, credsAddr, log)
	training, err := sagemaker.Open(ctx, db, ids, o.Region, runner, log)
	if err != nil {
		return err
	}
	if o.RequireInternodeEncryption {
		training.RequireInterContainerEncryption()
	}
	training.RegisterMetrics(srv.Registry())
	srv.Handle("sagemaker", training)
	// Endpoints: models in containers, reached through the runtime router.
	router := runtime.New(runtime.Config{IAM: ids, Account: ids.AccountID(), Region: o.Region, Registry: srv.Registry(), Log: log})
	srv.Handle(server.RuntimeService, router)
	endpointsDir := mkdir(o.DataDir, "endpoints")
	if err := training.ServeEndpoints(ctx, modelHost(runner, endpointsDir, o.EndpointHealthInterval, log), router); err != nil {
		return err
	}
	// Transform jobs run their models as endpoints do, on a host of their
	// own: their files and logs never meet an endpoint's.
	transformsDir := mkdir(o.DataDir, "transforms")
	if host, ok := modelHost(runner, transformsDir, o.EndpointHealthInterval, log).(sagemaker.TransformRunner); ok {
		training.ServeTransforms(host)
	}
	logs := cwlogs.New(ids, ids.AccountID(), o.Region, sagemaker.JobLogDirs(filepath.Join(o.DataDir, "jobs")), log)
	logs.AddSource(sagemaker.EndpointLogGroupPrefix, sagemaker.EndpointLogs(endpointsDir))
	logs.AddSource(sagemaker.TransformLogGroup, sagemaker.TransformLogs(transformsDir))
	srv.Handle("logs", logs)
	srv.CertificateServed(certs.Leaf())
	switch c := certs.(type) {
	case *pki.Rotator:
		c.OnRenew = srv.CertificateServed
	case *pki.FileSource:
		c.OnRenew = srv.CertificateServed
	}

	runCtx, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	go certs.Run(runCtx)
	serveErr := make(chan error, 3)
	go func() { serveErr <- srv.Serve(ln) }()
	go func() {
		if err := containerCreds.Serve(credsLn); err != nil {
			serveErr <- fmt.Errorf("container credentials endpoint: %w", err)
		}
	}()
	// After the jobs (training.Wait below): their containers may fetch
	// credentials until they have exited.
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		containerCreds.Close(cctx)
	}()
	fipsEndpoint := ""
	if fipsLn != nil {
		fipsEndpoint = "https://" + endpointHost(fipsLn.Addr().(*net.TCPAddr))
		fipsTLS := tlsconf.Server(tlsconf.FIPS, certs.GetCertificate, tlsconf.ServerOptions{})
		go func() { serveErr <- srv.ServeWith(fipsLn, fipsTLS) }()
	}

	endpoint := "https://" + endpointHost(addr)
	env := []envVar{
		{"CONVOY_ENDPOINT", endpoint},
		{"AWS_CA_BUNDLE", caBundle},
		{"AWS_ACCESS_KEY_ID", admin.ID},
		{"AWS_SECRET_ACCESS_KEY", admin.Secret},
		{"AWS_DEFAULT_REGION", o.Region},
		{"AWS_REGION", o.Region},
		{"CONVOY_TLS_PROFILE", string(o.Profile)},
		{"CONVOY_PID", strconv.Itoa(os.Getpid())},
	}
	if o.FIPS {
		fipsEndpoint = endpoint
	}
	if fipsEndpoint != "" {
		env = append(env, envVar{"CONVOY_FIPS_ENDPOINT", fipsEndpoint})
	}
	if err := fsutil.WriteFileAtomic(envPath, renderEnv(env), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", envPath, err)
	}
	log.Info("convoy is up", "endpoint", endpoint, "profile", o.Profile, "fips", o.FIPS, "fips_endpoint", fipsEndpoint,
		"account", ids.AccountID(), "data", o.DataDir)
	printSummary(o.Stdout, endpoint, caBundle, envPath, o.Profile)

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: stopping training jobs, finishing in-flight requests", "timeout", o.ShutdownTimeout)
	os.Remove(envPath)
	training.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("convoy stopped")
	return nil
}

// trainingRunner runs training jobs on this machine when it can (root and
// runc); otherwise convoy serves the SageMaker API but refuses to create
// jobs, saying why.
func trainingRunner(o Options, addr *net.TCPAddr, caBundle string, tokens *sts.Service,
	creds *credsvc.Server, credsAddr netip.AddrPort, log *slog.Logger) sagemaker.Runner {
	exec, err := executor.NewLocal(filepath.Join(o.DataDir, "executor"), log)
	if err != nil {
		log.Warn("training jobs are disabled: no local executor", "err", err)
		return nil
	}
	// Jobs of a previous run were marked Failed when the API opened; what
	// their containers (and, should any survive, their mesh agents) left
	// behind goes now.
	if n, err := mesh.KillStrays(filepath.Join(o.DataDir, "executor")); n > 0 || err != nil {
		log.Warn("killed mesh agents left by an earlier convoy", "agents", n, "err", err)
	}
	if err := exec.Reap(nil); err != nil {
		log.Warn("reap leftover training containers", "err", err)
	}
	store, err := images.Open(o.DataDir)
	if err != nil {
		log.Warn("training jobs are disabled: no image store", "err", err)
		return nil
	}
	host := endpointHost(addr)
	listen, err := netip.ParseAddrPort(host)
	if err != nil {
		log.Warn("training jobs are disabled", "err", err)
		return nil
	}
	if listen.Addr().IsLoopback() && listen.Port() == executor.CredentialsPort {
		// Containers reach a loopback listener at ServiceAddr:<its port>,
		// and ServiceAddr:80 is their credentials endpoint.
		log.Warn("training jobs and endpoints are disabled: containers reach convoy's API and their credentials endpoint at the same address, "+
			"169.254.170.2, and port 80 is the credentials endpoint's; choose another --listen port", "listen", listen)
		return nil
	}
	var caPEM []byte
	pool := x509.NewCertPool()
	if caBundle != "" {
		if caPEM, err = os.ReadFile(caBundle); err != nil {
			log.Warn("training jobs are disabled: read the CA bundle", "err", err)
			return nil
		}
		pool.AppendCertsFromPEM(caPEM)
	} else if pool, err = x509.SystemCertPool(); err != nil {
		log.Warn("training jobs are disabled: system CA pool", "err", err)
		return nil
	}
	tr := &http.Transport{TLSClientConfig: tlsconf.Client(o.Profile, pool, listen.Addr().String()), ForceAttemptHTTP2: true}
	runner := &sagemaker.LocalRunner{
		Executor: exec, Images: store, Creds: tokens, CredentialsEndpoint: creds, CredentialsAddr: credsAddr,
		Dir:      mkdir(o.DataDir, "jobs"),
		Endpoint: "https://" + host, HTTP: &http.Client{Transport: tr},
		Listen: listen, CAPEM: caPEM, Region: o.Region, StopGrace: o.StopGrace, Log: log,
		Volumes: volume.Gocryptfs{}, Mesh: meshSupervisor(o, log),
	}
	gate := &scan.Scanner{DataDir: o.DataDir, Threshold: o.DenyImageSeverity, Log: log}
	gate.StartupWarning()
	runner.Gate = gate
	if err := volume.Check(); err != nil {
		log.Warn("training and processing jobs will fail until this is fixed", "err", err)
	}
	if err := runner.Tidy(); err != nil {
		log.Warn("remove what interrupted training jobs left", "err", err)
	}
	return runner
}

// modelHost runs endpoints with the training runner's executor, or is nil
// (CreateEndpoint then refuses, saying why) when there is none.
func modelHost(runner sagemaker.Runner, dir string, healthEvery time.Duration, log *slog.Logger) sagemaker.ModelHost {
	lr, ok := runner.(*sagemaker.LocalRunner)
	if !ok || lr == nil {
		return nil
	}
	host := &sagemaker.LocalModelHost{Runner: lr, Dir: dir, HealthInterval: healthEvery}
	if err := host.Tidy(); err != nil {
		log.Warn("remove what interrupted endpoints left", "err", err)
	}
	return host
}

func certSource(o Options, pkiDir string, names []string) (pki.CertSource, string, error) {
	log := o.Logger
	if o.TLSCert != "" || o.TLSKey != "" {
		if o.TLSCert == "" || o.TLSKey == "" {
			return nil, "", errors.New("--tls-cert and --tls-key go together")
		}
		src, err := pki.NewFileSource(o.TLSCert, o.TLSKey, log)
		return src, o.CACert, err
	}
	var ca *pki.CA
	var err error
	caBundle := pki.PublicPath(pkiDir)
	if o.CACert != "" {
		if o.CAKey == "" {
			return nil, "", errors.New("--ca-cert needs --ca-key to issue certificates")
		}
		ca, err = pki.LoadCA(o.CACert, o.CAKey)
		caBundle = o.CACert
	} else {
		ca, err = pki.LoadOrCreateCA(pkiDir, "convoy root CA")
	}
	if err != nil {
		return nil, "", err
	}
	rot, err := pki.NewRotator(ca, pki.LeafRequest{
		CommonName: names[0], Names: names, Purpose: pki.ServerAuth, Lifetime: o.CertLifetime,
	}, filepath.Join(pkiDir, "server.pem"), log)
	return rot, caBundle, err
}

// serverNames are the SANs of the serving certificate: the listen address,
// loopback names, and the host name when listening on all interfaces.
func serverNames(addr *net.TCPAddr, extra []string) []string {
	// executor.ServiceAddr is where training containers reach convoy.
	names := []string{"localhost", "127.0.0.1", "::1", executor.ServiceAddr.String()}
	if !addr.IP.IsUnspecified() && !addr.IP.IsLoopback() {
		names = append([]string{addr.IP.String()}, names...)
	}
	if addr.IP.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			names = append(names, h)
		}
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() {
					names = append(names, ipn.IP.String())
				}
			}
		}
	}
	for _, n := range extra {
		if n = strings.TrimSpace(n); n != "" && !containsFold(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// virtualHosts are the names under which <bucket>.<name> addresses a bucket.
func virtualHosts(extra []string) []string {
	hosts := []string{"localhost"}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	for _, n := range extra {
		if net.ParseIP(n) == nil && n != "" {
			hosts = append(hosts, n)
		}
	}
	return hosts
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

func endpointHost(addr *net.TCPAddr) string {
	ip := addr.IP
	if ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1) // a wildcard listener answers on loopback too
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(addr.Port))
}

func mkdir(parent, name string) string {
	p := filepath.Join(parent, name)
	os.MkdirAll(p, 0o700)
	return p
}

// lockDataDir makes sure one convoy at a time uses a data directory. The lock
// is released by the kernel if the process dies.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "convoy.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is in use by another convoy (stop it, or choose another --data)", dir)
	}
	return func() { f.Close() }, nil
}

type envVar struct{ name, value string }

func renderEnv(vars []envVar) []byte {
	var b strings.Builder
	b.WriteString("# written by convoy up; source it: . ./convoy.env\n")
	for _, v := range vars {
		if v.value == "" {
			continue
		}
		fmt.Fprintf(&b, "export %s='%s'\n", v.name, strings.ReplaceAll(v.value, "'", `'\''`))
	}
	return []byte(b.String())
}

func printSummary(w io.Writer, endpoint, caBundle, envPath string, p tlsconf.Profile) {
	if w == nil {
		return
	}
	fmt.Fprintf(w, `convoy is up
  endpoint     %s  (TLS profile %s)
  CA bundle    %s
  credentials  %s  (admin access key, mode 0600)

Use it with the aws CLI:
  source %s
  aws --endpoint-url "$CONVOY_ENDPOINT" sts get-caller-identity

Press Ctrl-C to stop; in-flight requests finish first.
`, endpoint, p, caBundle, envPath, envPath)
}
