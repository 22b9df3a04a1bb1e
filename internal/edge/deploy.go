package edge

// Deployments, as AWS IoT Greengrass does them: the cloud holds a document
// per core (s3://BUCKET/<prefix>deployments/<core>.json) naming components,
// their artifacts with SHA-256 digests and a command; the core polls it over
// HTTPS (conditional GET, so an unchanged document costs a 304), downloads
// every artifact through the same verified-TLS, SigV4 S3 client as the
// uplink, checks each digest while streaming, installs by renaming a staged
// directory, and supervises one process per component. The outcome is
// written back next to the document as <core>.status.json.
//
// Written by hand: Greengrass's nucleus is Java and its recipe format is
// far larger than what convoy needs; the supervisor is a small loop over
// os/exec.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Deployment is the document the cloud publishes for a core. Field names
// follow Greengrass recipes.
type Deployment struct {
	DeploymentId string
	Components   []Component
}

// Component is one supervised process and the artifacts it runs from.
type Component struct {
	ComponentName    string
	ComponentVersion string
	Artifacts        []Artifact
	Lifecycle        Lifecycle
	Environment      map[string]string
}

// Artifact is a file fetched from the cloud's S3 into the component's
// directory, named as the last element of its key.
type Artifact struct {
	Uri       string
	Digest    string // base64 of the SHA-256 of the file
	Algorithm string // SHA-256 only
	Unarchive string // NONE only
}

// Lifecycle says how a component runs.
type Lifecycle struct {
	// Run is argv: argv[0] is an artifact's file name or an absolute path.
	Run []string
}

// DeploymentStatus is written to <prefix>deployments/<core>.status.json
// after every attempt. Components are the core's components after the
// attempt: the new ones on success, the previous ones (still running or
// restarted by the rollback) on failure.
type DeploymentStatus struct {
	DeploymentId string
	Status       string // SUCCEEDED or FAILED
	Reason       string `json:",omitempty"`
	Components   []ComponentStatus
	Time         time.Time
}

// ComponentStatus is the state of one supervised component.
type ComponentStatus struct {
	ComponentName    string
	ComponentVersion string
	State            string // STARTING, RUNNING, ERRORED (exited, restarting) or STOPPED
	Restarts         int
}

const (
	maxDeploymentBytes = 1 << 20
	// componentLogBytes is where a component's log is rotated to .log.1.
	componentLogBytes = 4 << 20
	// componentPath is the only PATH a component inherits.
	componentPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
)

// ParseDeployment decodes and validates a deployment document.
func ParseDeployment(raw []byte) (*Deployment, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var d Deployment
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("not a deployment document: %w", err)
	}
	if err := d.Validate(); err != nil {
		return &d, err
	}
	return &d, nil
}

// Validate checks everything that can be checked before downloading.
func (d *Deployment) Validate() error {
	if !validName(d.DeploymentId) {
		return fmt.Errorf("DeploymentId %q: want 1 to 128 of A-Z a-z 0-9 . _ -", d.DeploymentId)
	}
	seen := map[string]bool{}
	for i, c := range d.Components {
		if !validName(c.ComponentName) {
			return fmt.Errorf("component %d: ComponentName %q: want 1 to 128 of A-Z a-z 0-9 . _ -", i, c.ComponentName)
		}
		if seen[c.ComponentName] {
			return fmt.Errorf("component %s is listed twice", c.ComponentName)
		}
		seen[c.ComponentName] = true
		if err := c.validate(); err != nil {
			return fmt.Errorf("component %s: %w", c.ComponentName, err)
		}
	}
	return nil
}

func validName(s string) bool { return nameRE.MatchString(s) && s != "." && s != ".." }

func (c *Component) validate() error {
	if !validName(c.ComponentVersion) {
		return fmt.Errorf("ComponentVersion %q: want 1 to 128 of A-Z a-z 0-9 . _ -", c.ComponentVersion)
	}
	files := map[string]bool{}
	for _, a := range c.Artifacts {
		if _, _, err := parseS3URI(a.Uri); err != nil {
			return err
		}
		name := a.fileName()
		if !validName(name) {
			return fmt.Errorf("artifact %s: file name %q: want 1 to 128 of A-Z a-z 0-9 . _ -", a.Uri, name)
		}
		if files[name] {
			return fmt.Errorf("two artifacts are named %s", name)
		}
		files[name] = true
		if a.Algorithm != "" && a.Algorithm != "SHA-256" {
			return fmt.Errorf("artifact %s: Algorithm %q: only SHA-256 is supported", a.Uri, a.Algorithm)
		}
		if a.Digest == "" {
			return fmt.Errorf("artifact %s: Digest is required (base64 of the file's SHA-256)", a.Uri)
		}
		if sum, err := base64.StdEncoding.DecodeString(a.Digest); err != nil || len(sum) != sha256.Size {
			return fmt.Errorf("artifact %s: Digest %q is not the base64 of a 32-byte SHA-256", a.Uri, a.Digest)
		}
		if a.Unarchive != "" && a.Unarchive != "NONE" {
			return fmt.Errorf("artifact %s: Unarchive %q: only NONE is supported for now (ship single files)", a.Uri, a.Unarchive)
		}
	}
	run := c.Lifecycle.Run
	if len(run) == 0 || run[0] == "" {
		return errors.New("Lifecycle.Run is empty: want argv, e.g. [\"run.sh\", \"--flag\"]")
	}
	if !filepath.IsAbs(run[0]) && !files[run[0]] {
		return fmt.Errorf("Lifecycle.Run[0] %q is neither an artifact's file name nor an absolute path", run[0])
	}
	for _, a := range run {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("Lifecycle.Run holds a NUL byte")
		}
	}
	for k, v := range c.Environment {
		if !envKeyRE.MatchString(k) || strings.HasPrefix(k, "CONVOY_EDGE_") {
			return fmt.Errorf("Environment %q: want a shell variable name not starting with CONVOY_EDGE_", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("Environment %s holds a NUL byte", k)
		}
	}
	return nil
}

func (a Artifact) fileName() string {
	_, key, _ := parseS3URI(a.Uri)
	return path.Base(key)
}

func parseS3URI(uri string) (bucket, key string, err error) {
	rest, ok := strings.CutPrefix(uri, "s3://")
	if !ok {
		return "", "", fmt.Errorf("artifact %q: Uri must be s3://BUCKET/KEY in the cloud convoy", uri)
	}
	bucket, key, ok = strings.Cut(rest, "/")
	if !ok || bucket == "" || key == "" || strings.HasSuffix(key, "/") {
		return "", "", fmt.Errorf("artifact %q: Uri must be s3://BUCKET/KEY in the cloud convoy", uri)
	}
	return bucket, key, nil
}

// objectAPI is the part of the S3 client deployments use.
type objectAPI interface {
	GetObject(context.Context, *s3.GetObjectInput, ...func(*s3.Options)) (*s3.GetObjectOutput, error)
	PutObject(context.Context, *s3.PutObjectInput, ...func(*s3.Options)) (*s3.PutObjectOutput, error)
}

// Deployer polls the core's deployment document and applies it.
type Deployer struct {
	S3     objectAPI
	Bucket string
	Prefix string
	Core   string
	// Dir holds staging/ and components/<name>/<version>-<hash>/.
	Dir    string
	LogDir string
	IPC    string
	// UID and GID run the components.
	UID, GID uint32
	// DataDir is the core's data directory, which the components' user
	// must not be able to write (Check).
	DataDir    string
	AllowRoot  bool
	Poll       time.Duration
	Settle     time.Duration
	StopGrace  time.Duration
	RestartMin time.Duration
	RestartMax time.Duration
	Log        *slog.Logger

	metrics *metrics
	etag    string
	// current is written only by the polling goroutine, under mu, so that
	// goroutine reads it freely; any other (the metrics) reads it under mu.
	mu      sync.Mutex
	current *running
}

// running is the applied deployment.
type running struct {
	id   string
	sups []*supervisor
}

// prepared is an installed component ready to start.
type prepared struct {
	spec Component
	dir  string
}

// DocumentKey is the key of the core's deployment document.
func (d *Deployer) DocumentKey() string { return d.Prefix + "deployments/" + d.Core + ".json" }

// StatusKey is the key of the core's deployment status.
func (d *Deployer) StatusKey() string { return d.Prefix + "deployments/" + d.Core + ".status.json" }

// Check reports a setup that cannot run components safely: root without
// AllowRoot; the core's own user, or a user that may write the data
// directory (its owner, say), which could read the core's keys or replace
// the files the root core opens there (a log turned into a link to
// /etc/passwd); or a component user unable to reach Dir or the IPC socket.
func (d *Deployer) Check() error {
	if d.UID == 0 && !d.AllowRoot {
		return errors.New("components would run as root: pass --component-uid/--component-gid (a dedicated user), or --allow-root-components")
	}
	if d.UID != 0 {
		if uint32(os.Geteuid()) == d.UID {
			return fmt.Errorf("components would run as the core's own user (uid %d) and could read its keys: run the core as root and pass --component-uid/--component-gid of a dedicated user", d.UID)
		}
		if d.DataDir != "" {
			if err := notWritableBy(d.DataDir, d.UID, d.GID); err != nil {
				return fmt.Errorf("components would run as uid %d gid %d, who may write the data directory: %w; pass --component-uid/--component-gid of a dedicated user that does not own it", d.UID, d.GID, err)
			}
		}
	}
	if err := reachable(d.Dir, d.UID, d.GID); err != nil {
		return fmt.Errorf("component uid %d cannot reach the deployment directory: %w (use --deploy-dir in a directory that uid can traverse)", d.UID, err)
	}
	if err := reachable(filepath.Dir(d.IPC), d.UID, d.GID); err != nil {
		return fmt.Errorf("component uid %d cannot reach the IPC socket: %w (use --ipc-socket in a directory that uid can traverse)", d.UID, err)
	}
	return nil
}

// ready makes Dir and checks the setup, at start and before each
// deployment (so a fixed directory mode needs no restart).
func (d *Deployer) ready() error {
	if err := d.mkdir(d.Dir); err != nil {
		return err
	}
	return d.Check()
}

// notWritableBy fails if uid:gid (no supplementary groups) may write dir
// itself (its entries: rename, replace, plant links).
func notWritableBy(dir string, uid, gid uint32) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	mode := uint32(fi.Mode().Perm())
	var w bool
	switch {
	case st.Uid == uid:
		w = true // its owner may always make it writable
	case st.Gid == gid:
		w = mode&0o020 != 0
	default:
		w = mode&0o002 != 0
	}
	if w {
		return fmt.Errorf("%s (mode %04o, owner %d:%d)", dir, mode, st.Uid, st.Gid)
	}
	return nil
}

// reachable says whether uid:gid (no supplementary groups) may traverse
// every directory from / to dir.
func reachable(dir string, uid, gid uint32) error {
	if uid == 0 {
		return nil
	}
	dir = filepath.Clean(dir)
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			st := fi.Sys().(*syscall.Stat_t)
			mode := uint32(fi.Mode().Perm())
			var ok bool
			switch {
			case st.Uid == uid:
				ok = mode&0o100 != 0
			case st.Gid == gid:
				ok = mode&0o010 != 0
			default:
				ok = mode&0o001 != 0
			}
			if !ok {
				return fmt.Errorf("%s (mode %04o, owner %d:%d) is not traversable", p, mode, st.Uid, st.Gid)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// Run polls until ctx ends, then stops the components.
func (d *Deployer) Run(ctx context.Context) {
	if err := d.ready(); err != nil {
		d.Log.Warn("deployments: components cannot run; deployments will fail until this is fixed", "reason", err.Error())
	}
	d.Log.Info("deployments: polling", "document", "s3://"+d.Bucket+"/"+d.DocumentKey(), "every", d.Poll,
		"component_uid", d.UID, "component_gid", d.GID)
	defer func() {
		if d.current != nil {
			stopAll(d.current.sups)
		}
	}()
	failing := false
	for {
		if err := d.PollOnce(ctx); err != nil && ctx.Err() == nil {
			// An unreachable cloud is logged once, not every poll.
			if !failing {
				d.Log.Warn("deployments: cannot read the deployment document; retrying", "err", err)
			}
			failing = true
		} else {
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(d.Poll):
		}
	}
}

// statusCoder is what the SDK's response errors implement.
type statusCoder interface{ HTTPStatusCode() int }

// PollOnce fetches the document if it changed and applies it.
func (d *Deployer) PollOnce(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	in := &s3.GetObjectInput{Bucket: aws.String(d.Bucket), Key: aws.String(d.DocumentKey())}
	if d.etag != "" {
		in.IfNoneMatch = aws.String(d.etag)
	}
	out, err := d.S3.GetObject(cctx, in)
	var sc statusCoder
	if errors.As(err, &sc) {
		switch sc.HTTPStatusCode() {
		case 304:
			return nil
		case 404:
			if d.etag != "" {
				d.Log.Info("deployments: the document was removed; components keep running")
				d.etag = ""
			}
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("get s3://%s/%s: %w", d.Bucket, d.DocumentKey(), err)
	}
	raw, err := io.ReadAll(io.LimitReader(out.Body, maxDeploymentBytes+1))
	out.Body.Close()
	if err != nil {
		return err
	}
	// A document is applied once per version: a bad one is not retried
	// until it changes.
	d.etag = aws.ToString(out.ETag)
	var st DeploymentStatus
	if len(raw) > maxDeploymentBytes {
		st = d.failed("", fmt.Errorf("the document is larger than %d bytes", maxDeploymentBytes))
	} else {
		st = d.Apply(ctx, raw)
	}
	d.metrics.deployed(st.Status)
	return d.putStatus(ctx, st)
}

// Apply applies one document and returns its status. A failure leaves the
// previous deployment running.
func (d *Deployer) Apply(ctx context.Context, raw []byte) DeploymentStatus {
	doc, err := ParseDeployment(raw)
	if err != nil {
		id := ""
		if doc != nil && validName(doc.DeploymentId) {
			id = doc.DeploymentId
		}
		return d.failed(id, fmt.Errorf("invalid deployment document: %w", err))
	}
	log := d.Log.With("deployment", doc.DeploymentId)
	log.Info("deployments: new deployment", "components", len(doc.Components))
	if err := d.ready(); err != nil {
		return d.failed(doc.DeploymentId, err)
	}
	next, err := d.install(ctx, doc, log)
	if errors.As(err, new(retryable)) {
		// The same document is tried again at the next poll.
		d.etag = ""
		return d.failed(doc.DeploymentId, fmt.Errorf("%w; retrying", err))
	}
	if err != nil {
		return d.failed(doc.DeploymentId, err)
	}
	prev := d.current
	if prev != nil {
		log.Info("deployments: stopping the previous deployment", "previous", prev.id)
		stopAll(prev.sups)
	}
	sups := d.startAll(next)
	if err := d.settle(ctx, sups); err != nil {
		stopAll(sups)
		reason := err.Error()
		if prev != nil {
			var again []prepared
			for _, s := range prev.sups {
				again = append(again, s.prep)
			}
			d.setCurrent(&running{id: prev.id, sups: d.startAll(again)})
			reason += "; rolled back to deployment " + prev.id
			log.Warn("deployments: rolled back", "to", prev.id)
		} else {
			d.setCurrent(nil)
		}
		return d.failed(doc.DeploymentId, errors.New(reason))
	}
	d.setCurrent(&running{id: doc.DeploymentId, sups: sups})
	d.removeUnused()
	log.Info("deployments: deployment succeeded")
	return DeploymentStatus{DeploymentId: doc.DeploymentId, Status: "SUCCEEDED", Components: d.componentStatus(), Time: time.Now().UTC()}
}

func (d *Deployer) failed(id string, err error) DeploymentStatus {
	d.Log.Warn("deployments: deployment failed", "deployment", id, "reason", err.Error())
	return DeploymentStatus{DeploymentId: id, Status: "FAILED", Reason: err.Error(), Components: d.componentStatus(), Time: time.Now().UTC()}
}

func (d *Deployer) setCurrent(r *running) {
	d.mu.Lock()
	d.current = r
	d.mu.Unlock()
}

// componentStatus is the state of the running deployment's components; it
// may be called from any goroutine, and on a nil *Deployer (no components).
func (d *Deployer) componentStatus() []ComponentStatus {
	out := []ComponentStatus{}
	if d == nil {
		return out
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.current != nil {
		for _, s := range d.current.sups {
			out = append(out, s.status())
		}
	}
	return out
}

func (d *Deployer) putStatus(ctx context.Context, st DeploymentStatus) error {
	body, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err = d.S3.PutObject(cctx, &s3.PutObjectInput{Bucket: aws.String(d.Bucket), Key: aws.String(d.StatusKey()),
		Body: bytes.NewReader(body), ContentType: aws.String("application/json")})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", d.Bucket, d.StatusKey(), err)
	}
	return nil
}

// settle waits until every component has run for Settle without exiting.
func (d *Deployer) settle(ctx context.Context, sups []*supervisor) error {
	deadline := time.Now().Add(d.Settle)
	for {
		for _, s := range sups {
			st := s.status()
			if st.Restarts > 0 || st.State == "ERRORED" {
				return fmt.Errorf("component %s exited within %s of its start (see %s)", st.ComponentName, d.Settle, s.logPath)
			}
		}
		if time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// install downloads and verifies every artifact of doc into staging
// directories, then renames them into place: a failure installs nothing.
func (d *Deployer) install(ctx context.Context, doc *Deployment, log *slog.Logger) ([]prepared, error) {
	staging := filepath.Join(d.Dir, "staging")
	for _, dir := range []string{d.Dir, staging, filepath.Join(d.Dir, "components")} {
		if err := d.mkdir(dir); err != nil {
			return nil, err
		}
	}
	type stage struct{ tmp, final string }
	var stages []stage
	defer func() {
		for _, s := range stages {
			os.RemoveAll(s.tmp)
		}
	}()
	var out []prepared
	for _, c := range doc.Components {
		final := filepath.Join(d.Dir, "components", c.ComponentName, c.ComponentVersion+"-"+contentHash(c))
		out = append(out, prepared{spec: c, dir: final})
		if verifyInstalled(final, c) == nil {
			log.Info("deployments: component already installed", "component", c.ComponentName, "version", c.ComponentVersion)
			continue
		}
		tmp, err := os.MkdirTemp(staging, c.ComponentName+"-")
		if err != nil {
			return nil, err
		}
		stages = append(stages, stage{tmp, final})
		for _, a := range c.Artifacts {
			if err := d.download(ctx, a, filepath.Join(tmp, a.fileName()), a.fileName() == c.Lifecycle.Run[0]); err != nil {
				return nil, fmt.Errorf("component %s: %w", c.ComponentName, err)
			}
		}
		if err := os.Chmod(tmp, 0o750); err != nil {
			return nil, err
		}
		if err := d.chgrp(tmp); err != nil {
			return nil, err
		}
		log.Info("deployments: artifacts verified", "component", c.ComponentName, "version", c.ComponentVersion, "artifacts", len(c.Artifacts))
	}
	for _, s := range stages {
		if err := d.mkdir(filepath.Dir(s.final)); err != nil {
			return nil, err
		}
		os.RemoveAll(s.final) // a damaged earlier install of the same content
		if err := os.Rename(s.tmp, s.final); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// retryable marks a failure that may pass (the cloud was unreachable),
// unlike a bad document or a digest mismatch.
type retryable struct{ error }

func (r retryable) Unwrap() error { return r.error }

// contentHash names an install directory by what is in it, so the same
// version with other artifacts never reuses a directory.
func contentHash(c Component) string {
	h := sha256.New()
	for _, a := range c.Artifacts {
		fmt.Fprintf(h, "%s\x00%s\x00", a.Uri, a.Digest)
	}
	fmt.Fprintf(h, "%s\x00", c.Lifecycle.Run[0])
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// verifyInstalled re-hashes an existing install directory.
func verifyInstalled(dir string, c Component) error {
	for _, a := range c.Artifacts {
		f, err := os.Open(filepath.Join(dir, a.fileName()))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		if got := base64.StdEncoding.EncodeToString(h.Sum(nil)); got != a.Digest {
			return errors.New("digest mismatch")
		}
	}
	return nil
}

func (d *Deployer) download(ctx context.Context, a Artifact, dst string, executable bool) error {
	bucket, key, _ := parseS3URI(a.Uri)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	out, err := d.S3.GetObject(cctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return retryable{fmt.Errorf("artifact %s: download: %w", a.Uri, err)}
	}
	defer out.Body.Close()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), out.Body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return retryable{fmt.Errorf("artifact %s: download: %w", a.Uri, err)}
	}
	if got := base64.StdEncoding.EncodeToString(h.Sum(nil)); got != a.Digest {
		return fmt.Errorf("artifact %s: digest mismatch: the document says SHA-256 %s, the %d downloaded bytes have %s; nothing was installed", a.Uri, a.Digest, n, got)
	}
	mode := os.FileMode(0o640)
	if executable {
		mode = 0o750
	}
	if err := os.Chmod(dst, mode); err != nil {
		return err
	}
	return d.chgrp(dst)
}

// mkdir makes dir 0750 with the component group, so components can read
// their artifacts but not write them.
func (d *Deployer) mkdir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	return d.chgrp(dir)
}

func (d *Deployer) chgrp(p string) error {
	if d.GID == uint32(os.Getegid()) {
		return nil
	}
	if err := os.Chown(p, -1, int(d.GID)); err != nil {
		return fmt.Errorf("give %s to the component group %d: %w", p, d.GID, err)
	}
	return nil
}

// removeUnused deletes install directories the running deployment does not
// use: old versions go once the new ones run.
func (d *Deployer) removeUnused() {
	keep := map[string]bool{}
	for _, s := range d.current.sups {
		keep[s.prep.dir] = true
	}
	root := filepath.Join(d.Dir, "components")
	names, _ := os.ReadDir(root)
	for _, n := range names {
		versions, _ := os.ReadDir(filepath.Join(root, n.Name()))
		used := false
		for _, v := range versions {
			p := filepath.Join(root, n.Name(), v.Name())
			if keep[p] {
				used = true
				continue
			}
			if err := os.RemoveAll(p); err == nil {
				d.Log.Info("deployments: removed an old version", "dir", p)
			}
		}
		if !used {
			os.Remove(filepath.Join(root, n.Name()))
		}
	}
}

func (d *Deployer) startAll(ps []prepared) []*supervisor {
	var sups []*supervisor
	for _, p := range ps {
		s := &supervisor{
			prep: p, logPath: filepath.Join(d.LogDir, p.spec.ComponentName+".log"),
			env: componentEnv(p, d.IPC), uid: d.UID, gid: d.GID,
			grace: d.StopGrace, restartMin: d.RestartMin, restartMax: d.RestartMax,
			restarted: d.metrics.restartCounter(p.spec.ComponentName),
			log:       d.Log.With("component", p.spec.ComponentName, "version", p.spec.ComponentVersion),
		}
		s.start()
		sups = append(sups, s)
	}
	return sups
}

// componentEnv is all a component gets: nothing of the core's environment
// (which holds the cloud's keys).
func componentEnv(p prepared, ipc string) []string {
	env := []string{"PATH=" + componentPath, "HOME=" + p.dir, "LANG=C.UTF-8"}
	keys := make([]string, 0, len(p.spec.Environment))
	for k := range p.spec.Environment {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		env = append(env, k+"="+p.spec.Environment[k])
	}
	return append(env, "CONVOY_EDGE_IPC="+ipc, "CONVOY_EDGE_COMPONENT="+p.spec.ComponentName)
}

func stopAll(sups []*supervisor) {
	var wg sync.WaitGroup
	for _, s := range sups {
		wg.Go(s.stop)
	}
	wg.Wait()
}

// supervisor runs one component's process and restarts it when it exits.
type supervisor struct {
	prep       prepared
	logPath    string
	env        []string
	uid, gid   uint32
	grace      time.Duration
	restartMin time.Duration
	restartMax time.Duration
	log        *slog.Logger
	// restarted, if set, counts a restart (metrics).
	restarted func()

	mu       sync.Mutex
	state    string
	restarts int
	pid      int

	stopc    chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func (s *supervisor) status() ComponentStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ComponentStatus{ComponentName: s.prep.spec.ComponentName, ComponentVersion: s.prep.spec.ComponentVersion, State: s.state, Restarts: s.restarts}
}

// Pid is the process ID of the running process, or 0.
func (s *supervisor) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

func (s *supervisor) set(state string, pid int) {
	s.mu.Lock()
	s.state, s.pid = state, pid
	s.mu.Unlock()
}

func (s *supervisor) start() {
	s.stopc, s.done = make(chan struct{}), make(chan struct{})
	s.state = "STARTING"
	go s.loop()
}

func (s *supervisor) stop() {
	s.stopOnce.Do(func() { close(s.stopc) })
	<-s.done
}

func (s *supervisor) command(out io.Writer) *exec.Cmd {
	argv := s.prep.spec.Lifecycle.Run
	bin := argv[0]
	if !filepath.IsAbs(bin) {
		bin = filepath.Join(s.prep.dir, bin)
	}
	cmd := &exec.Cmd{Path: bin, Args: slices.Clone(argv), Dir: s.prep.dir, Env: s.env, Stdout: out, Stderr: out}
	cmd.Args[0] = bin
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if s.uid != uint32(os.Geteuid()) || s.gid != uint32(os.Getegid()) {
		attr.Credential = &syscall.Credential{Uid: s.uid, Gid: s.gid, Groups: []uint32{}}
	}
	cmd.SysProcAttr = attr
	// A grandchild holding stdout open must not hold Wait forever.
	cmd.WaitDelay = s.grace
	return cmd
}

func (s *supervisor) loop() {
	defer close(s.done)
	out, err := openRotating(s.logPath, componentLogBytes)
	if err != nil {
		s.log.Error("component log", "err", err)
		out = nil
	}
	defer func() {
		if out != nil {
			out.Close()
		}
	}()
	var w io.Writer = io.Discard
	if out != nil {
		w = out
	}
	backoff := s.restartMin
	for {
		cmd := s.command(w)
		began := time.Now()
		if err := cmd.Start(); err != nil {
			s.set("ERRORED", 0)
			s.log.Error("component did not start", "err", err)
		} else {
			pid := cmd.Process.Pid
			s.set("RUNNING", pid)
			s.log.Info("component started", "pid", pid, "uid", s.uid)
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case err := <-exited:
				syscall.Kill(-pid, syscall.SIGKILL) // what it left behind in its group
				s.set("ERRORED", 0)
				s.log.Warn("component exited", "pid", pid, "err", fmt.Sprint(err), "ran", time.Since(began).Round(time.Millisecond))
			case <-s.stopc:
				s.terminate(pid, exited)
				return
			}
			if time.Since(began) > s.restartMax {
				backoff = s.restartMin
			}
		}
		s.mu.Lock()
		s.restarts++
		s.mu.Unlock()
		if s.restarted != nil {
			s.restarted()
		}
		select {
		case <-s.stopc:
			s.set("STOPPED", 0)
			s.log.Info("component stopped")
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, s.restartMax)
	}
}

// terminate sends SIGTERM to the component's process group and SIGKILL
// after the grace.
func (s *supervisor) terminate(pid int, exited chan error) {
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-exited:
		syscall.Kill(-pid, syscall.SIGKILL)
		s.log.Info("component stopped", "pid", pid, "signal", "SIGTERM")
	case <-time.After(s.grace):
		syscall.Kill(-pid, syscall.SIGKILL)
		<-exited
		s.log.Warn("component stopped", "pid", pid, "signal", "SIGKILL", "grace", s.grace)
	}
	s.set("STOPPED", 0)
}

// rotating is an append-only log file moved to .1 when it reaches max.
type rotating struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
}

func openRotating(p string, max int64) (*rotating, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	r := &rotating{path: p, max: max}
	return r, r.open()
}

func (r *rotating) open() error {
	// The log directory is the core's; still, a link where a log belongs
	// is not followed.
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, fi.Size()
	return nil
}

func (r *rotating) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return len(p), nil
	}
	if r.size+int64(len(p)) > r.max && r.size > 0 {
		r.f.Close()
		r.f = nil
		os.Rename(r.path, r.path+".1")
		if err := r.open(); err != nil {
			return len(p), nil // the component must not die of its log
		}
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	if err != nil {
		return len(p), nil
	}
	return n, nil
}

func (r *rotating) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	return r.f.Close()
}
