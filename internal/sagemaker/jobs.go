// Package sagemaker serves the SageMaker control-plane API (awsJson1_1,
// X-Amz-Target: SageMaker.*) for training and processing jobs, and for
// models, endpoint configurations and endpoints (endpoints.go; the
// invocations themselves are internal/runtime's): validation, iam:PassRole,
// the records and their status state machines. Running a job is the
// Runner's business (staging data, the executor, uploading the model);
// this package records what the runner reports as SageMaker's
// TrainingJobStatus / SecondaryStatus transitions, and survives restarts
// truthfully: a job that was running when convoy stopped is marked Failed
// with the reason, never left InProgress.
package sagemaker

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/state"
)

var migrations = []string{
	`CREATE TABLE sm_training_jobs (
		name             TEXT PRIMARY KEY,
		arn              TEXT NOT NULL,
		request          TEXT NOT NULL,  -- the validated CreateTrainingJob request, JSON
		creator          TEXT NOT NULL,  -- principal ARN
		status           TEXT NOT NULL,
		secondary        TEXT NOT NULL,
		failure_reason   TEXT NOT NULL DEFAULT '',
		transitions      TEXT NOT NULL DEFAULT '[]',
		model_artifacts  TEXT NOT NULL DEFAULT '',
		created          TEXT NOT NULL,
		modified         TEXT NOT NULL,
		training_start   TEXT NOT NULL DEFAULT '',
		training_end     TEXT NOT NULL DEFAULT '',
		stop_requested   INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX sm_training_jobs_created ON sm_training_jobs(created);
	CREATE TABLE sm_tags (
		arn   TEXT NOT NULL,
		key   TEXT NOT NULL,
		value TEXT NOT NULL,
		PRIMARY KEY (arn, key)
	);`,
	processingMigration,
	// Job names are unique regardless of case, as on SageMaker: their ARNs,
	// tags and runner directories are lower-cased, so "Job" beside "job"
	// would share them.
	`CREATE UNIQUE INDEX sm_training_jobs_name_nocase ON sm_training_jobs(name COLLATE NOCASE);
	CREATE UNIQUE INDEX sm_processing_jobs_name_nocase ON sm_processing_jobs(name COLLATE NOCASE);`,
	transformMigration,
}

// Training job statuses (TrainingJobStatus).
const (
	InProgress = "InProgress"
	Completed  = "Completed"
	Failed     = "Failed"
	Stopping   = "Stopping"
	Stopped    = "Stopped"
)

// Transition is one SecondaryStatusTransitions entry.
type Transition struct {
	Status        string  `json:"Status"`
	StartTime     float64 `json:"StartTime"`
	EndTime       float64 `json:"EndTime,omitempty"`
	StatusMessage string  `json:"StatusMessage,omitempty"`
}

// Job is what a Runner gets to run.
type Job struct {
	Name    string
	ARN     string
	Request CreateTrainingJobRequest
	Creator string
	Role    iam.Role
}

// Runner runs training jobs. Run returns when the job has ended; it reports
// progress through the Reporter and must stop the job when ctx is done
// (StopTrainingJob or shutdown).
type Runner interface {
	Run(ctx context.Context, job *Job, report Reporter) Outcome
}

// Validator is implemented by a Runner that can tell, before a job is
// recorded, that it could never run it (its training image is unknown):
// CreateTrainingJob then fails with the error instead of creating a job
// that fails at once.
type Validator interface {
	Validate(ctx context.Context, req *CreateTrainingJobRequest) error
}

// ErrStopRequested is the cause of a job context cancelled by
// StopTrainingJob; any other cancellation is convoy shutting down.
var ErrStopRequested = errors.New("StopTrainingJob requested")

// Reporter records a job's secondary status.
type Reporter func(secondary, message string)

// Outcome is how a job ended.
type Outcome struct {
	Status         string // Completed, Failed or Stopped
	Secondary      string // Completed, Failed, Stopped, MaxRuntimeExceeded
	FailureReason  string
	ModelArtifacts string
}

// Service is the SageMaker API.
type Service struct {
	db      *state.DB
	iam     *iam.Store
	region  string
	log     *slog.Logger
	runner  Runner
	mu      sync.Mutex
	running map[string]context.CancelCauseFunc
	wg      sync.WaitGroup
	baseCtx context.Context
	hosting hosting // models, endpoint configurations, endpoints: endpoints.go
	// requireICE: see RequireInterContainerEncryption (internode.go).
	requireICE bool
	// transforms runs transform jobs: see ServeTransforms (transform.go).
	transforms TransformRunner
}

// Open migrates the tables and settles jobs a previous run left unfinished.
// runner may be nil: then CreateTrainingJob refuses with a clear message.
func Open(ctx context.Context, db *state.DB, store *iam.Store, region string, runner Runner, log *slog.Logger) (*Service, error) {
	if err := db.Migrate(ctx, "sagemaker", migrations); err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, "sagemaker-hosting", hostingMigrations); err != nil {
		return nil, err
	}
	s := &Service{db: db, iam: store, region: region, log: log, runner: runner, running: map[string]context.CancelCauseFunc{}, baseCtx: ctx}
	rows, err := db.QueryContext(ctx, `SELECT name FROM sm_training_jobs WHERE status IN ('InProgress', 'Stopping')`)
	if err != nil {
		return nil, err
	}
	var orphans []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		orphans = append(orphans, n)
	}
	rows.Close()
	for _, n := range orphans {
		s.finish(n, Outcome{Status: Failed, Secondary: "Failed",
			FailureReason: "convoy stopped while this job was running; its containers were stopped with it. Start the job again under a new name."})
		log.Warn("training job interrupted by a convoy restart, marked Failed", "job", n)
	}
	if err := s.settleProcessing(ctx); err != nil {
		return nil, err
	}
	if err := s.settleTransforms(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Wait blocks until every running job has ended (after ctx cancellation).
func (s *Service) Wait() { s.wg.Wait() }

func nowEpoch() float64 { return float64(time.Now().UnixMilli()) / 1000 }

func (s *Service) jobARN(name string) string {
	return fmt.Sprintf("arn:aws:sagemaker:%s:%s:training-job/%s", s.region, s.iam.AccountID(), lower(name))
}

// setSecondary appends a secondary status transition, closing the previous.
func (s *Service) setSecondary(name, secondary, message string) {
	err := s.db.Tx(context.Background(), func(tx *sql.Tx) error {
		var raw, cur string
		if err := tx.QueryRow(`SELECT transitions, secondary FROM sm_training_jobs WHERE name = ?`, name).Scan(&raw, &cur); err != nil {
			return err
		}
		var ts []Transition
		json.Unmarshal([]byte(raw), &ts)
		now := nowEpoch()
		if n := len(ts); n > 0 && ts[n-1].EndTime == 0 {
			if ts[n-1].Status == secondary {
				ts[n-1].StatusMessage = message
			} else {
				ts[n-1].EndTime = now
			}
		}
		if len(ts) == 0 || ts[len(ts)-1].Status != secondary {
			ts = append(ts, Transition{Status: secondary, StartTime: now, StatusMessage: message})
		}
		out, _ := json.Marshal(ts)
		extra := ""
		if secondary == "Training" {
			extra = `, training_start = CASE training_start WHEN '' THEN ? ELSE training_start END`
		}
		args := []any{secondary, string(out), stamp()}
		if extra != "" {
			args = append(args, stamp())
		}
		args = append(args, name)
		_, err := tx.Exec(`UPDATE sm_training_jobs SET secondary = ?, transitions = ?, modified = ?`+extra+` WHERE name = ?`, args...)
		return err
	})
	if err != nil {
		s.log.Error("record training job status", "job", name, "status", secondary, "err", err)
	}
}

func (s *Service) finish(name string, o Outcome) {
	s.setSecondary(name, o.Secondary, o.FailureReason)
	err := s.db.Tx(context.Background(), func(tx *sql.Tx) error {
		var raw string
		tx.QueryRow(`SELECT transitions FROM sm_training_jobs WHERE name = ?`, name).Scan(&raw)
		var ts []Transition
		json.Unmarshal([]byte(raw), &ts)
		if n := len(ts); n > 0 && ts[n-1].EndTime == 0 {
			ts[n-1].EndTime = nowEpoch()
		}
		out, _ := json.Marshal(ts)
		_, err := tx.Exec(`UPDATE sm_training_jobs SET status = ?, failure_reason = ?, model_artifacts = ?, transitions = ?,
			training_end = ?, modified = ? WHERE name = ?`, o.Status, o.FailureReason, o.ModelArtifacts, string(out), stamp(), stamp(), name)
		return err
	})
	if err != nil {
		s.log.Error("record training job end", "job", name, "err", err)
	}
}

func stamp() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// start runs a job in the background.
func (s *Service) start(job *Job) {
	ctx, cancel := context.WithCancelCause(s.baseCtx)
	s.mu.Lock()
	s.running[job.Name] = cancel
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel(nil)
		out := s.runner.Run(ctx, job, func(sec, msg string) { s.setSecondary(job.Name, sec, msg) })
		s.mu.Lock()
		delete(s.running, job.Name)
		s.mu.Unlock()
		s.finish(job.Name, out)
		s.log.Info("training job ended", "job", job.Name, "status", out.Status, "reason", out.FailureReason)
	}()
}

func (s *Service) stop(name string) bool {
	s.mu.Lock()
	cancel, ok := s.running[name]
	s.mu.Unlock()
	if ok {
		cancel(ErrStopRequested)
	}
	return ok
}

func notFound(format string, args ...any) *awsproto.Error {
	return awsproto.Errorf(http.StatusBadRequest, "ResourceNotFound", format, args...)
}

var errNoRows = sql.ErrNoRows

func isNoRows(err error) bool { return errors.Is(err, errNoRows) }

// interruptedReason is the FailureReason of a job a convoy restart ended.
const interruptedReason = "convoy stopped while this job was running; its containers were stopped with it. Start the job again under a new name."

// settleJobs marks Failed the jobs of table (processing, transform) that a
// previous run of convoy left InProgress or Stopping: their containers
// stopped with it. endCol is the table's end-time column; what names the
// jobs in the log.
func (s *Service) settleJobs(ctx context.Context, table, endCol, what string) error {
	now := stamp()
	res, err := s.db.ExecContext(ctx, `UPDATE `+table+` SET status = 'Failed', failure_reason = ?, `+endCol+` = ?, modified = ?
		WHERE status IN ('InProgress', 'Stopping')`, interruptedReason, now, now)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n > 0 {
		s.log.Warn(what+" interrupted by a convoy restart, marked Failed", "jobs", n)
	}
	return nil
}

// markStarted records in startCol of table that the job name has started.
func (s *Service) markStarted(table, startCol, name string) {
	now := stamp()
	if _, err := s.db.ExecContext(context.Background(), `UPDATE `+table+` SET `+startCol+` = ?, modified = ? WHERE name = ?`,
		now, now, name); err != nil {
		s.log.Error("record job start", "table", table, "job", name, "err", err)
	}
}

// goJob runs a job in the background under s.baseCtx, registered under
// key in s.running so that a Stop* call can cancel it. run does the job and
// returns how to record its end, which goJob calls once the job is no
// longer registered.
func (s *Service) goJob(key string, run func(ctx context.Context) (finish func())) {
	ctx, cancel := context.WithCancelCause(s.baseCtx)
	s.mu.Lock()
	s.running[key] = cancel
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel(nil)
		finish := run(ctx)
		s.mu.Lock()
		delete(s.running, key)
		s.mu.Unlock()
		finish()
	}()
}
