package sagemaker

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"convoy/internal/iam"
	"convoy/internal/runtime"
)

// Endpoints run their configuration's variants on a ModelHost and are
// routed to by a Router (runtime.Router). Their status follows SageMaker's
// EndpointStatus:
//
//	CreateEndpoint  → Creating → InService, or Failed with FailureReason
//	UpdateEndpoint  → Updating → InService on the new configuration once its
//	                  instances answer /ping and traffic has moved to them
//	                  (the old ones are stopped after their last request), or
//	                  InService on the old one with FailureReason
//	DeleteEndpoint  → Deleting → gone, its containers stopped
//
// Containers do not survive convoy. When convoy starts, an endpoint that
// was InService or Updating is started again on the configuration it was
// running (SystemUpdating, then InService), one that was Creating is
// created again, and one that cannot be started is marked Failed with the
// reason; an unfinished deletion is finished.

var hostingMigrations = []string{
	`CREATE TABLE sm_models (
		name     TEXT PRIMARY KEY COLLATE NOCASE,
		arn      TEXT NOT NULL,
		request  TEXT NOT NULL,  -- the validated CreateModel request, JSON
		creator  TEXT NOT NULL,
		created  TEXT NOT NULL
	);
	CREATE TABLE sm_endpoint_configs (
		name     TEXT PRIMARY KEY COLLATE NOCASE,
		arn      TEXT NOT NULL,
		request  TEXT NOT NULL,  -- the validated CreateEndpointConfig request, JSON
		creator  TEXT NOT NULL,
		created  TEXT NOT NULL
	);
	CREATE TABLE sm_endpoints (
		name           TEXT PRIMARY KEY COLLATE NOCASE,
		arn            TEXT NOT NULL,
		creator        TEXT NOT NULL,
		status         TEXT NOT NULL,
		failure_reason TEXT NOT NULL DEFAULT '',
		config_name    TEXT NOT NULL,             -- the configuration it runs, or is being created with
		deployed       TEXT NOT NULL DEFAULT '',  -- Deployment JSON of what runs
		pending        TEXT NOT NULL DEFAULT '',  -- Deployment JSON being started
		pending_start  TEXT NOT NULL DEFAULT '',
		created        TEXT NOT NULL,
		modified       TEXT NOT NULL
	);`,
}

// Endpoint statuses (EndpointStatus).
const (
	epCreating       = "Creating"
	epUpdating       = "Updating"
	epSystemUpdating = "SystemUpdating"
	epInService      = "InService"
	epDeleting       = "Deleting"
	epFailed         = "Failed"
)

// Deployment is what an endpoint runs: its configuration's variants, with
// their models resolved when the deployment was asked for, so that it can
// be started again after a restart even if the configuration or models
// have been deleted since (as SageMaker allows).
type Deployment struct {
	// ID is unique to this deployment; it names its files.
	ID         string
	Endpoint   string
	ConfigName string
	Variants   []DeployedVariant
}

// DeployedVariant is one variant of a Deployment.
type DeployedVariant struct {
	VariantName      string
	Weight           float64
	InstanceCount    int
	InstanceType     string
	ModelName        string
	Image            string
	ModelDataUrl     string            `json:",omitempty"`
	Environment      map[string]string `json:",omitempty"`
	RoleARN          string            `json:",omitempty"`
	NetworkIsolation bool
	// DownloadTimeout and StartupTimeout are the variant's
	// ModelDataDownloadTimeoutInSeconds and
	// ContainerStartupHealthCheckTimeoutInSeconds; 0 is the host's default.
	DownloadTimeout, StartupTimeout int `json:",omitempty"`
	// ResolvedImage and Resolved are set by the host: the image's digest
	// reference and when it was resolved (DeployedImages).
	ResolvedImage string  `json:",omitempty"`
	Resolved      float64 `json:",omitempty"`
	// Role is the execution role, looked up from RoleARN before a start.
	Role iam.Role `json:"-"`
	// KmsKeyId (the endpoint config's) keys the encrypted volume that
	// holds the variant's model data; VolumeSizeInGB sizes it.
	KmsKeyId       string `json:",omitempty"`
	VolumeSizeInGB int    `json:",omitempty"`
}

// ModelHost runs the instances of endpoints.
type ModelHost interface {
	// Start fetches each variant's model data and starts its instances. It
	// returns once every instance answers GET /ping with 200, or with the
	// reason it cannot (a FailureReason, for people); when ctx ends first it
	// stops what it started and returns ctx's error. changed is called,
	// from any goroutine, whenever the running instances change afterwards
	// (one exited, one replaced it).
	Start(ctx context.Context, d *Deployment, changed func()) (Running, error)
}

// Running is a started deployment.
type Running interface {
	// Variants are the deployment's variants with the instances that run now.
	Variants() []runtime.Variant
	// Stop stops every instance and removes the deployment's files but
	// its logs. It waits until they are gone and may be called again.
	Stop()
}

// Router is what the endpoints tell where to send invocations
// (runtime.Router).
type Router interface {
	Set(ep runtime.Endpoint) (drained func(context.Context) error)
	Remove(name string) (drained func(context.Context) error)
}

// drainTimeout bounds how long requests to the instances an update
// replaces may take to finish before those are stopped anyway (SageMaker
// gives a container 60 s to answer).
const drainTimeout = 90 * time.Second

// errDeleting is the cause of a deployment cancelled by DeleteEndpoint.
var errDeleting = errors.New("DeleteEndpoint requested")

// hosting is the endpoint half of the Service.
type hosting struct {
	host   ModelHost
	router Router
	mu     sync.Mutex
	live   map[string]*liveEndpoint // by lower-case name
}

// liveEndpoint is an endpoint's running state in this process.
type liveEndpoint struct {
	name string // as created

	mu      sync.Mutex
	current Running     // what is routed to
	spec    *Deployment // what current runs
	// cancel stops the deployment in progress; busy is closed when its
	// goroutine has ended.
	cancel context.CancelCauseFunc
	busy   chan struct{}
}

// ServeEndpoints lets the service run endpoints on host, routed by router,
// and starts again the endpoints a previous convoy left running (see the
// comment at the top of this file). Call it once, after Open. Until it is
// called, CreateEndpoint refuses with a clear message.
func (s *Service) ServeEndpoints(ctx context.Context, host ModelHost, router Router) error {
	s.hosting.mu.Lock()
	s.hosting.host, s.hosting.router = host, router
	s.hosting.live = map[string]*liveEndpoint{}
	s.hosting.mu.Unlock()

	type row struct{ name, status, reason, deployed, pending string }
	rows, err := s.db.QueryContext(ctx, `SELECT name, status, failure_reason, deployed, pending FROM sm_endpoints`)
	if err != nil {
		return err
	}
	var all []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.name, &r.status, &r.reason, &r.deployed, &r.pending); err != nil {
			rows.Close()
			return err
		}
		all = append(all, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, r := range all {
		if host == nil && r.status != epDeleting && r.status != epFailed {
			s.endpointFailed(r.name, "convoy started without a container executor (it needs root and runc), so it cannot run this endpoint; start convoy as root and delete and create the endpoint again")
			continue
		}
		switch r.status {
		case epDeleting:
			s.log.Info("finishing the deletion of an endpoint interrupted by a convoy restart", "endpoint", r.name)
			s.forgetEndpoint(r.name)
			continue
		case epCreating:
			var d Deployment
			if err := json.Unmarshal([]byte(r.pending), &d); err != nil {
				s.endpointFailed(r.name, "convoy restarted while creating this endpoint and could not read what to create; delete it and create it again")
				continue
			}
			s.log.Info("creating an endpoint again after a convoy restart", "endpoint", r.name)
			s.startDeployment(s.liveEndpoint(r.name), &d, modeCreate)
		case epInService, epUpdating, epSystemUpdating:
			var d Deployment
			if err := json.Unmarshal([]byte(r.deployed), &d); err != nil {
				s.endpointFailed(r.name, "convoy restarted and could not read what this endpoint ran; delete it and create it again")
				continue
			}
			reason := ""
			if r.status == epUpdating {
				var p Deployment
				json.Unmarshal([]byte(r.pending), &p)
				reason = fmt.Sprintf("convoy restarted while this endpoint was being updated to endpoint configuration %s; it was started again on %s. Call UpdateEndpoint again.", p.ConfigName, d.ConfigName)
			} else if r.status == epSystemUpdating {
				reason = r.reason
			}
			if err := s.setEndpoint(r.name, epSystemUpdating, reason, "pending = '', pending_start = ''"); err != nil {
				return err
			}
			s.log.Info("starting an endpoint again after a convoy restart", "endpoint", r.name, "config", d.ConfigName)
			s.startDeployment(s.liveEndpoint(r.name), &d, modeRestart)
		default: // Failed, OutOfService: nothing runs
			router.Set(runtime.Endpoint{Name: r.name, Status: r.status})
		}
	}
	// convoy stopping stops every endpoint's containers (they would not
	// survive it) and leaves the records as they are, to start again.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-s.baseCtx.Done()
		s.hosting.mu.Lock()
		live := make([]*liveEndpoint, 0, len(s.hosting.live))
		for _, le := range s.hosting.live {
			live = append(live, le)
		}
		s.hosting.mu.Unlock()
		for _, le := range live {
			le.mu.Lock()
			cur, busy := le.current, le.busy
			le.current = nil
			le.mu.Unlock()
			if busy != nil {
				<-busy // a deployment in progress stops what it started
			}
			if cur != nil {
				cur.Stop()
			}
		}
	}()
	return nil
}

func (s *Service) endpointARN(name string) string {
	return fmt.Sprintf("arn:aws:sagemaker:%s:%s:endpoint/%s", s.region, s.iam.AccountID(), lower(name))
}

func (s *Service) endpointNotFound(name string) error {
	return validation("Could not find endpoint %q.", s.endpointARN(name))
}

func (s *Service) liveEndpoint(name string) *liveEndpoint {
	s.hosting.mu.Lock()
	defer s.hosting.mu.Unlock()
	le, ok := s.hosting.live[lower(name)]
	if !ok {
		le = &liveEndpoint{name: name}
		s.hosting.live[lower(name)] = le
	}
	return le
}

// setEndpoint records an endpoint's status and reason, and extra
// assignments ("pending = ”"). It never overwrites Deleting: once
// DeleteEndpoint has been accepted, only the deletion changes the record.
func (s *Service) setEndpoint(name, status, reason, extra string, args ...any) error {
	q := `UPDATE sm_endpoints SET status = ?, failure_reason = ?, modified = ?`
	if extra != "" {
		q += ", " + extra
	}
	all := append([]any{status, truncate(reason, 1024), stamp()}, args...)
	_, err := s.db.ExecContext(context.Background(), q+` WHERE name = ? AND status != 'Deleting'`, append(all, name)...)
	if err != nil {
		s.log.Error("record endpoint status", "endpoint", name, "status", status, "err", err)
	}
	return err
}

func (s *Service) endpointFailed(name, reason string) {
	s.setEndpoint(name, epFailed, reason, "pending = '', pending_start = ''")
	s.hosting.router.Set(runtime.Endpoint{Name: name, Status: epFailed})
	s.log.Warn("endpoint failed", "endpoint", name, "reason", reason)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func newDeploymentID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// deployment resolves an endpoint configuration and its models into what
// to run.
func (s *Service) deployment(ctx context.Context, endpoint, configName string) (*Deployment, error) {
	cfg, _, err := s.loadEndpointConfig(ctx, configName)
	if err != nil {
		return nil, err
	}
	d := &Deployment{ID: newDeploymentID(), Endpoint: endpoint, ConfigName: cfg.EndpointConfigName}
	for _, v := range cfg.ProductionVariants {
		m, _, err := s.loadModel(ctx, v.ModelName)
		if err != nil {
			return nil, err
		}
		c := m.container()
		d.Variants = append(d.Variants, DeployedVariant{
			VariantName: v.VariantName, Weight: *v.InitialVariantWeight, InstanceCount: v.InitialInstanceCount,
			InstanceType: v.InstanceType, ModelName: m.ModelName, Image: c.Image, ModelDataUrl: c.ModelDataUrl,
			Environment: c.Environment, RoleARN: m.ExecutionRoleArn, NetworkIsolation: m.EnableNetworkIsolation,
			DownloadTimeout: v.ModelDataDownloadTimeoutInSeconds, StartupTimeout: v.ContainerStartupHealthCheckTimeoutInSeconds,
			KmsKeyId: cfg.KmsKeyId, VolumeSizeInGB: v.VolumeSizeInGB,
		})
	}
	return d, nil
}

type deployMode int

const (
	modeCreate  deployMode = iota // Creating → InService | Failed
	modeUpdate                    // Updating → InService (new) | InService (old) + reason
	modeRestart                   // SystemUpdating → InService | Failed
)

// startDeployment starts d for le in the background.
func (s *Service) startDeployment(le *liveEndpoint, d *Deployment, mode deployMode) {
	ctx, cancel := context.WithCancelCause(s.baseCtx)
	busy := make(chan struct{})
	le.mu.Lock()
	le.cancel, le.busy = cancel, busy
	le.mu.Unlock()
	switch mode {
	case modeCreate:
		s.hosting.router.Set(runtime.Endpoint{Name: le.name, Status: epCreating})
	case modeRestart:
		s.hosting.router.Set(runtime.Endpoint{Name: le.name, Status: epSystemUpdating})
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(busy)
		defer cancel(nil)
		s.deploy(ctx, le, d, mode)
	}()
}

// deploy runs one deployment to InService or failure.
func (s *Service) deploy(ctx context.Context, le *liveEndpoint, d *Deployment, mode deployMode) {
	log := s.log.With("endpoint", le.name, "config", d.ConfigName, "deployment", d.ID)
	t0 := time.Now()
	var running Running
	err := s.resolveRoles(ctx, d)
	if err == nil {
		running, err = s.hosting.host.Start(ctx, d, func() { s.publish(le) })
	}
	le.mu.Lock()
	if ctx.Err() != nil {
		// Deleted, or convoy is stopping: the record is someone else's.
		le.cancel, le.busy = nil, nil
		le.mu.Unlock()
		if running != nil {
			running.Stop()
		}
		log.Info("endpoint deployment abandoned", "why", context.Cause(ctx))
		return
	}
	le.cancel, le.busy = nil, nil
	if err != nil {
		le.mu.Unlock()
		reason := err.Error()
		switch mode {
		case modeUpdate:
			s.setEndpoint(le.name, epInService, fmt.Sprintf("Failed to update the endpoint to endpoint configuration %s: %s; it still runs %s", d.ConfigName, reason, s.configOf(le)),
				"pending = '', pending_start = ''")
			log.Warn("endpoint update failed; the endpoint keeps its configuration", "reason", reason)
		case modeRestart:
			s.endpointFailed(le.name, "convoy restarted and could not start this endpoint again: "+reason)
		default:
			s.endpointFailed(le.name, reason)
		}
		return
	}
	old := le.current
	le.current, le.spec = running, d
	routes := s.routes(le)
	drained := s.hosting.router.Set(routes)
	le.mu.Unlock()

	raw, _ := json.Marshal(d)
	reason := ""
	if mode == modeRestart {
		// Why it was restarted on what it ran (an update was lost) stays.
		s.db.QueryRow(`SELECT failure_reason FROM sm_endpoints WHERE name = ?`, le.name).Scan(&reason)
	}
	s.setEndpoint(le.name, epInService, reason, "config_name = ?, deployed = ?, pending = '', pending_start = ''", d.ConfigName, string(raw))
	log.Info("endpoint in service", "variants", len(d.Variants), "start_ms", time.Since(t0).Milliseconds())
	if old != nil {
		dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
		if err := drained(dctx); err != nil {
			log.Warn("stopping the replaced instances with invocations in flight", "err", err)
		}
		cancel()
		old.Stop()
		log.Info("replaced instances stopped")
	}
}

// configOf names the configuration le runs.
func (s *Service) configOf(le *liveEndpoint) string {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.spec != nil {
		return le.spec.ConfigName
	}
	return "its previous configuration"
}

// resolveRoles looks up each variant's execution role.
func (s *Service) resolveRoles(ctx context.Context, d *Deployment) error {
	for i := range d.Variants {
		v := &d.Variants[i]
		if v.RoleARN == "" {
			continue
		}
		role, err := s.iam.RoleByARN(ctx, v.RoleARN)
		if err != nil {
			return fmt.Errorf("variant %s: the execution role %s of model %s cannot be used: %v", v.VariantName, v.RoleARN, v.ModelName, err)
		}
		v.Role = role
	}
	return nil
}

// routes is what the router gets for le. Called with le.mu held.
func (s *Service) routes(le *liveEndpoint) runtime.Endpoint {
	ep := runtime.Endpoint{Name: le.name, Status: epInService}
	if le.current != nil {
		ep.Variants = le.current.Variants()
	}
	return ep
}

// publish tells the router about a change of le's instances.
func (s *Service) publish(le *liveEndpoint) {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.current != nil {
		s.hosting.router.Set(s.routes(le))
	}
}

// forgetEndpoint deletes an endpoint's record and tags.
func (s *Service) forgetEndpoint(name string) {
	arn := s.endpointARN(name)
	err := s.db.Tx(context.Background(), func(tx *sql.Tx) error {
		if _, err := tx.Exec(`DELETE FROM sm_endpoints WHERE name = ?`, name); err != nil {
			return err
		}
		_, err := tx.Exec(`DELETE FROM sm_tags WHERE arn = ?`, arn)
		return err
	})
	if err != nil {
		s.log.Error("delete endpoint record", "endpoint", name, "err", err)
	}
	if s.hosting.router != nil {
		s.hosting.router.Remove(name)
	}
	s.hosting.mu.Lock()
	delete(s.hosting.live, lower(name))
	s.hosting.mu.Unlock()
}

func (s *Service) needHost() error {
	s.hosting.mu.Lock()
	defer s.hosting.mu.Unlock()
	if s.hosting.host == nil {
		return validation("this convoy has no container executor configured (it needs root and runc), so it cannot run endpoints")
	}
	return nil
}

func (s *Service) createEndpoint(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct {
		EndpointName       string
		EndpointConfigName string
		DeploymentConfig   json.RawMessage
		Tags               []Tag
	}
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if !jobNameRE.MatchString(req.EndpointName) {
		return nil, validation("1 validation error detected: Value '%s' at 'endpointName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", req.EndpointName)
	}
	if !isNull(req.DeploymentConfig) {
		return nil, validation("DeploymentConfig is not supported by this convoy: it starts the new instances, shifts all traffic once they are healthy, then stops the old ones")
	}
	if len(req.Tags) > maxTags {
		return nil, validation("a resource can have at most %d tags", maxTags)
	}
	ctx := r.Context()
	arn := s.endpointARN(req.EndpointName)
	if err := s.iam.Authorize(ctx, p, "sagemaker:CreateEndpoint", arn, tagConditions(nil, req.Tags)); err != nil {
		return nil, err
	}
	if err := s.authorizeCreateTags(ctx, p, arn, req.Tags); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(ctx, p, "sagemaker:CreateEndpoint", s.endpointConfigARN(req.EndpointConfigName), nil); err != nil {
		return nil, err
	}
	if err := s.needHost(); err != nil {
		return nil, err
	}
	d, err := s.deployment(ctx, req.EndpointName, req.EndpointConfigName)
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(d)
	now := stamp()
	_, err = s.db.ExecContext(ctx, `INSERT INTO sm_endpoints (name, arn, creator, status, config_name, pending, pending_start, created, modified)
		VALUES (?, ?, ?, 'Creating', ?, ?, ?, ?, ?)`, req.EndpointName, arn, p.ARN, d.ConfigName, string(raw), now, now, now)
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return nil, validation("Cannot create already existing endpoint %q.", arn)
	}
	if err != nil {
		return nil, err
	}
	s.putTags(ctx, arn, req.Tags)
	s.startDeployment(s.liveEndpoint(req.EndpointName), d, modeCreate)
	return map[string]string{"EndpointArn": arn}, nil
}

func (s *Service) updateEndpoint(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct {
		EndpointName                     string
		EndpointConfigName               string
		RetainAllVariantProperties       bool
		ExcludeRetainedVariantProperties json.RawMessage
		DeploymentConfig                 json.RawMessage
		RetainDeploymentConfig           bool
	}
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if req.RetainAllVariantProperties || !isNull(req.DeploymentConfig) || !isNull(req.ExcludeRetainedVariantProperties) {
		return nil, validation("RetainAllVariantProperties, ExcludeRetainedVariantProperties and DeploymentConfig are not supported by this convoy")
	}
	ctx := r.Context()
	arn := s.endpointARN(req.EndpointName)
	if err := s.iam.Authorize(ctx, p, "sagemaker:UpdateEndpoint", arn, nil); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(ctx, p, "sagemaker:UpdateEndpoint", s.endpointConfigARN(req.EndpointConfigName), nil); err != nil {
		return nil, err
	}
	if err := s.needHost(); err != nil {
		return nil, err
	}
	var name, status string
	err := s.db.QueryRowContext(ctx, `SELECT name, status FROM sm_endpoints WHERE name = ?`, req.EndpointName).Scan(&name, &status)
	if isNoRows(err) {
		return nil, s.endpointNotFound(req.EndpointName)
	}
	if err != nil {
		return nil, err
	}
	switch status {
	case epInService:
	case epFailed:
		return nil, validation("Cannot update endpoint %q: it is Failed (see its FailureReason); delete it and create it again.", arn)
	default:
		return nil, validation("Cannot update in-progress endpoint %q: it is %s; wait until it is InService.", arn, status)
	}
	d, err := s.deployment(ctx, name, req.EndpointConfigName)
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(d)
	res, err := s.db.ExecContext(ctx, `UPDATE sm_endpoints SET status = 'Updating', failure_reason = '', pending = ?, pending_start = ?, modified = ?
		WHERE name = ? AND status = 'InService'`, string(raw), stamp(), stamp(), name)
	if err != nil {
		return nil, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil, validation("Cannot update in-progress endpoint %q.", arn)
	}
	s.startDeployment(s.liveEndpoint(name), d, modeUpdate)
	return map[string]string{"EndpointArn": arn}, nil
}

func (s *Service) deleteEndpoint(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ EndpointName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	if err := s.iam.Authorize(ctx, p, "sagemaker:DeleteEndpoint", s.endpointARN(req.EndpointName), nil); err != nil {
		return nil, err
	}
	var name string
	err := s.db.QueryRowContext(ctx, `SELECT name FROM sm_endpoints WHERE name = ?`, req.EndpointName).Scan(&name)
	if isNoRows(err) {
		return nil, s.endpointNotFound(req.EndpointName)
	}
	if err != nil {
		return nil, err
	}
	res, err := s.db.ExecContext(ctx, `UPDATE sm_endpoints SET status = 'Deleting', modified = ? WHERE name = ? AND status != 'Deleting'`, stamp(), name)
	if err != nil {
		return nil, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return map[string]any{}, nil // already being deleted
	}
	if s.hosting.router == nil {
		s.forgetEndpoint(name)
		return map[string]any{}, nil
	}
	le := s.liveEndpoint(name)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.teardown(le)
	}()
	return map[string]any{}, nil
}

// teardown stops everything of a deleted endpoint and forgets it.
func (s *Service) teardown(le *liveEndpoint) {
	le.mu.Lock()
	if le.cancel != nil {
		le.cancel(errDeleting)
	}
	cur, busy := le.current, le.busy
	le.current = nil
	drained := s.hosting.router.Set(runtime.Endpoint{Name: le.name, Status: epDeleting})
	le.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	if err := drained(ctx); err != nil {
		s.log.Warn("deleting an endpoint with invocations in flight", "endpoint", le.name, "err", err)
	}
	cancel()
	if busy != nil {
		<-busy
	}
	if cur != nil {
		cur.Stop()
	}
	s.forgetEndpoint(le.name)
	s.log.Info("endpoint deleted", "endpoint", le.name)
}

// variantSummaries are DescribeEndpoint's ProductionVariants for d; running,
// if known, gives the current instance counts.
func variantSummaries(d *Deployment, running map[string]int, current bool, since string) []map[string]any {
	out := make([]map[string]any, 0, len(d.Variants))
	for _, v := range d.Variants {
		m := map[string]any{"VariantName": v.VariantName, "DesiredWeight": v.Weight, "DesiredInstanceCount": v.InstanceCount}
		if v.ResolvedImage != "" {
			m["DeployedImages"] = []map[string]any{{"SpecifiedImage": v.Image, "ResolvedImage": v.ResolvedImage, "ResolutionTime": v.Resolved}}
		}
		if current {
			m["CurrentWeight"] = v.Weight
			m["CurrentInstanceCount"] = running[v.VariantName]
		} else {
			m["InstanceType"] = v.InstanceType
			m["VariantStatus"] = []map[string]any{{"Status": "Creating", "StartTime": epoch(since)}}
		}
		out = append(out, m)
	}
	return out
}

// instanceCounts counts the running instances of each variant of le.
func (s *Service) instanceCounts(name string, d *Deployment) map[string]int {
	counts := map[string]int{}
	s.hosting.mu.Lock()
	le := s.hosting.live[lower(name)]
	s.hosting.mu.Unlock()
	if le == nil {
		return counts
	}
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.current == nil || le.spec == nil || le.spec.ID != d.ID {
		return counts
	}
	for _, v := range le.current.Variants() {
		counts[v.Name] = len(v.Instances)
	}
	return counts
}

func (s *Service) describeEndpoint(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ EndpointName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DescribeEndpoint", s.endpointARN(req.EndpointName), nil); err != nil {
		return nil, err
	}
	var name, arn, status, reason, config, deployed, pending, pendingStart, created, modified string
	err := s.db.QueryRowContext(r.Context(), `SELECT name, arn, status, failure_reason, config_name, deployed, pending, pending_start, created, modified
		FROM sm_endpoints WHERE name = ?`, req.EndpointName).Scan(&name, &arn, &status, &reason, &config, &deployed, &pending, &pendingStart, &created, &modified)
	if isNoRows(err) {
		return nil, s.endpointNotFound(req.EndpointName)
	}
	if err != nil {
		return nil, err
	}
	out := map[string]any{
		"EndpointName": name, "EndpointArn": arn, "EndpointConfigName": config, "EndpointStatus": status,
		"CreationTime": epoch(created), "LastModifiedTime": epoch(modified),
	}
	if reason != "" {
		out["FailureReason"] = reason
	}
	var d, pd Deployment
	hasDeployed := json.Unmarshal([]byte(deployed), &d) == nil
	hasPending := json.Unmarshal([]byte(pending), &pd) == nil
	switch {
	case hasDeployed:
		out["ProductionVariants"] = variantSummaries(&d, s.instanceCounts(name, &d), true, "")
		if hasPending && status == epUpdating {
			out["PendingDeploymentSummary"] = map[string]any{"EndpointConfigName": pd.ConfigName,
				"ProductionVariants": variantSummaries(&pd, nil, false, pendingStart), "StartTime": epoch(pendingStart)}
		}
	case hasPending:
		out["ProductionVariants"] = variantSummaries(&pd, nil, false, pendingStart)
	}
	return out, nil
}

func (s *Service) listEndpoints(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req listRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:ListEndpoints", "*", nil); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(r.Context(), `SELECT name, arn, status, created, modified FROM sm_endpoints`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var all []listed
	for rows.Next() {
		var name, arn, status, created, modified string
		if err := rows.Scan(&name, &arn, &status, &created, &modified); err != nil {
			return nil, err
		}
		m, _ := epoch(modified).(float64)
		all = append(all, listed{name: name, created: created, status: status, modified: m,
			summary: map[string]any{"EndpointName": name, "EndpointArn": arn, "EndpointStatus": status,
				"CreationTime": epoch(created), "LastModifiedTime": m}})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return list(&req, "Endpoints", all)
}

// errUnknownOperation is what serveHosting returns for an operation that
// is not one of its own.
var errUnknownOperation = errors.New("unknown operation")

// serveHosting dispatches the model, endpoint configuration and endpoint
// operations.
func (s *Service) serveHosting(op string, r *http.Request, p *iam.Principal, body []byte) (any, error) {
	switch op {
	case "CreateModel":
		return s.createModel(r, p, body)
	case "DescribeModel":
		return s.describeModel(r, p, body)
	case "ListModels":
		return s.listModels(r, p, body)
	case "DeleteModel":
		return s.deleteModel(r, p, body)
	case "CreateEndpointConfig":
		return s.createEndpointConfig(r, p, body)
	case "DescribeEndpointConfig":
		return s.describeEndpointConfig(r, p, body)
	case "ListEndpointConfigs":
		return s.listEndpointConfigs(r, p, body)
	case "DeleteEndpointConfig":
		return s.deleteEndpointConfig(r, p, body)
	case "CreateEndpoint":
		return s.createEndpoint(r, p, body)
	case "DescribeEndpoint":
		return s.describeEndpoint(r, p, body)
	case "ListEndpoints":
		return s.listEndpoints(r, p, body)
	case "UpdateEndpoint":
		return s.updateEndpoint(r, p, body)
	case "DeleteEndpoint":
		return s.deleteEndpoint(r, p, body)
	}
	return nil, errUnknownOperation
}
