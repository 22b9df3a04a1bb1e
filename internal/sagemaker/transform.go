package sagemaker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// Batch transform jobs (CreateTransformJob and friends) run a model's
// container as endpoints do, send it every record of the input objects
// and write what it answers next to them in S3. They share the other
// jobs' statuses, running-job bookkeeping and restart rule; the data half
// is transform_batch.go, the containers transform_runner.go.

// CreateTransformJobRequest holds the fields convoy honours.
type CreateTransformJobRequest struct {
	TransformJobName        string
	ModelName               string
	MaxConcurrentTransforms int                `json:",omitempty"`
	MaxPayloadInMB          *int               `json:",omitempty"`
	ModelClientConfig       *ModelClientConfig `json:",omitempty"`
	BatchStrategy           string             `json:",omitempty"`
	Environment             map[string]string  `json:",omitempty"`
	TransformInput          *TransformInput
	TransformOutput         *TransformOutput
	DataCaptureConfig       json.RawMessage `json:",omitempty"`
	TransformResources      *TransformResources
	DataProcessing          *DataProcessing `json:",omitempty"`
	ExperimentConfig        json.RawMessage `json:",omitempty"`
	Tags                    []Tag           `json:",omitempty"`
}

// ModelClientConfig bounds each request to the container.
type ModelClientConfig struct {
	InvocationsTimeoutInSeconds int  `json:",omitempty"`
	InvocationsMaxRetries       *int `json:",omitempty"`
}

// TransformInput is where the records come from and how they split.
type TransformInput struct {
	DataSource struct {
		S3DataSource *struct {
			S3DataType string
			S3Uri      string
		} `json:",omitempty"`
	}
	ContentType     string `json:",omitempty"`
	CompressionType string `json:",omitempty"`
	SplitType       string `json:",omitempty"`
}

// TransformOutput is where the answers go and how they join.
type TransformOutput struct {
	S3OutputPath string
	Accept       string `json:",omitempty"`
	AssembleWith string `json:",omitempty"`
	KmsKeyId     string `json:",omitempty"`
}

// TransformResources sizes the job.
type TransformResources struct {
	InstanceType        string
	InstanceCount       int
	VolumeKmsKeyId      string `json:",omitempty"`
	TransformAmiVersion string `json:",omitempty"`
}

// DataProcessing filters and joins records; convoy runs the defaults only.
type DataProcessing struct {
	InputFilter  string `json:",omitempty"`
	OutputFilter string `json:",omitempty"`
	JoinSource   string `json:",omitempty"`
}

// Split types, batch strategies and assembly (TransformInput.SplitType,
// BatchStrategy, TransformOutput.AssembleWith).
const (
	splitNone      = "None"
	splitLine      = "Line"
	splitRecordIO  = "RecordIO"
	singleRecord   = "SingleRecord"
	multiRecord    = "MultiRecord"
	assembleNone   = "None"
	assembleLine   = "Line"
	defaultPayload = 6 // MB, SageMaker's default MaxPayloadInMB
	maxPayload     = 100
	// defaultInvocationTimeout and defaultInvocationRetries are
	// ModelClientConfig's defaults.
	defaultInvocationTimeout = 600
	defaultInvocationRetries = 3
	maxConcurrentTransforms  = 64
)

// split, strategy, assemble and payload are the request's settings with
// SageMaker's defaults.
func (r *CreateTransformJobRequest) split() string {
	if r.TransformInput.SplitType == "" {
		return splitNone
	}
	return r.TransformInput.SplitType
}

func (r *CreateTransformJobRequest) strategy() string {
	if r.BatchStrategy == "" {
		return singleRecord
	}
	return r.BatchStrategy
}

func (r *CreateTransformJobRequest) assemble() string {
	if r.TransformOutput.AssembleWith == "" {
		return assembleNone
	}
	return r.TransformOutput.AssembleWith
}

// payload is MaxPayloadInMB in bytes.
func (r *CreateTransformJobRequest) payload() int {
	mb := defaultPayload
	if r.MaxPayloadInMB != nil {
		mb = *r.MaxPayloadInMB
	}
	return mb << 20
}

func (r *CreateTransformJobRequest) concurrency() int {
	if r.MaxConcurrentTransforms == 0 {
		return 1
	}
	return r.MaxConcurrentTransforms
}

func (r *CreateTransformJobRequest) validate() error {
	if !jobNameRE.MatchString(r.TransformJobName) {
		return validation("1 validation error detected: Value '%s' at 'transformJobName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", r.TransformJobName)
	}
	if len(r.ModelName) > 63 || !modelNameRE.MatchString(r.ModelName) {
		return validation("1 validation error detected: Value '%s' at 'modelName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9]([\\-a-zA-Z0-9]*[a-zA-Z0-9])?", r.ModelName)
	}
	in, out, res := r.TransformInput, r.TransformOutput, r.TransformResources
	switch {
	case in == nil:
		return enumError("", "transformInput", nil)
	case out == nil:
		return enumError("", "transformOutput", nil)
	case res == nil:
		return enumError("", "transformResources", nil)
	}
	src := in.DataSource.S3DataSource
	if src == nil {
		return validation("TransformInput.DataSource.S3DataSource is required")
	}
	if src.S3DataType != "S3Prefix" && src.S3DataType != "ManifestFile" {
		return enumError(src.S3DataType, "transformInput.dataSource.s3DataSource.s3DataType", []string{"ManifestFile", "S3Prefix", "AugmentedManifestFile"})
	}
	if !s3URIRE.MatchString(src.S3Uri) {
		return validation("TransformInput.DataSource.S3DataSource.S3Uri %q is not an s3://bucket/prefix URI", src.S3Uri)
	}
	if c := in.CompressionType; c != "" && c != "None" && c != "Gzip" {
		return enumError(c, "transformInput.compressionType", []string{"None", "Gzip"})
	}
	switch in.SplitType {
	case "", splitNone, splitLine, splitRecordIO:
	case "TFRecord":
		return validation("SplitType TFRecord is not supported by this convoy; use None, Line or RecordIO")
	default:
		return enumError(in.SplitType, "transformInput.splitType", []string{"None", "Line", "RecordIO", "TFRecord"})
	}
	if s := r.BatchStrategy; s != "" && s != singleRecord && s != multiRecord {
		return enumError(s, "batchStrategy", []string{multiRecord, singleRecord})
	}
	if !s3URIRE.MatchString(out.S3OutputPath) {
		return validation("TransformOutput.S3OutputPath %q is not an s3://bucket/prefix URI", out.S3OutputPath)
	}
	if a := out.AssembleWith; a != "" && a != assembleNone && a != assembleLine {
		return enumError(a, "transformOutput.assembleWith", []string{assembleNone, assembleLine})
	}
	if res.InstanceType == "" {
		return enumError("", "transformResources.instanceType", nil)
	}
	if res.InstanceCount < 1 || res.InstanceCount > maxInstanceCount {
		return validation("TransformResources.InstanceCount must be between 1 and %d, not %d", maxInstanceCount, res.InstanceCount)
	}
	if r.MaxPayloadInMB != nil {
		switch mb := *r.MaxPayloadInMB; {
		case mb < 0 || mb > maxPayload:
			return validation("1 validation error detected: Value '%d' at 'maxPayloadInMB' failed to satisfy constraint: Member must have value less than or equal to %d", mb, maxPayload)
		case mb == 0:
			return validation("MaxPayloadInMB 0 (unbounded payloads sent with chunked encoding) is not supported by this convoy; give a limit between 1 and %d", maxPayload)
		}
	}
	if n := r.MaxConcurrentTransforms; n < 0 || n > maxConcurrentTransforms {
		return validation("MaxConcurrentTransforms must be between 0 and %d, not %d", maxConcurrentTransforms, n)
	}
	// SageMaker's rule, which also bounds what a job holds in memory.
	if mb := r.payload() >> 20; r.concurrency()*mb > maxPayload {
		return validation("MaxConcurrentTransforms (%d) × MaxPayloadInMB (%d) must not exceed %d MB", r.concurrency(), mb, maxPayload)
	}
	if c := r.ModelClientConfig; c != nil {
		if t := c.InvocationsTimeoutInSeconds; t != 0 && (t < 1 || t > 3600) {
			return validation("ModelClientConfig.InvocationsTimeoutInSeconds must be between 1 and 3600, not %d", t)
		}
		if n := c.InvocationsMaxRetries; n != nil && (*n < 0 || *n > 3) {
			return validation("ModelClientConfig.InvocationsMaxRetries must be between 0 and 3, not %d", *n)
		}
	}
	if len(r.Environment) > 16 {
		return validation("Environment may have at most 16 entries")
	}
	for k, v := range r.Environment {
		if len(k) > 1024 || !envKeyRE.MatchString(k) || len(v) > 10240 {
			return validation("Environment key %q must match [a-zA-Z_][a-zA-Z0-9_]* and values be at most 10240 characters", k)
		}
	}
	if !isNull(r.DataCaptureConfig) {
		return validation("DataCaptureConfig is not supported by this convoy yet")
	}
	if dp := r.DataProcessing; dp != nil {
		if (dp.InputFilter != "" && dp.InputFilter != "$") || (dp.OutputFilter != "" && dp.OutputFilter != "$") || (dp.JoinSource != "" && dp.JoinSource != "None") {
			return validation("DataProcessing (InputFilter %q, OutputFilter %q, JoinSource %q) is not supported by this convoy yet: only the defaults, InputFilter \"$\", OutputFilter \"$\" and JoinSource None, are", dp.InputFilter, dp.OutputFilter, dp.JoinSource)
		}
	}
	if len(r.Tags) > maxTags {
		return validation("a resource can have at most %d tags", maxTags)
	}
	return nil
}

// TransformJob is what a TransformRunner gets to run: the request and the
// model as it was when the job was created.
type TransformJob struct {
	Name    string
	ARN     string
	Request CreateTransformJobRequest
	Model   CreateModelRequest
	// Role is the model's execution role: it reads the input and writes
	// the output, and the containers get its credentials.
	Role    iam.Role
	Creator string
}

// TransformOutcome is how a transform job ended.
type TransformOutcome struct {
	Status        string // Completed, Failed or Stopped
	FailureReason string
}

// TransformRunner runs transform jobs. RunTransform calls started when
// the model's containers answer /ping, returns when the job has ended and
// must stop the job (and its containers) when ctx is done.
type TransformRunner interface {
	RunTransform(ctx context.Context, job *TransformJob, started func()) TransformOutcome
}

var transformMigration = `CREATE TABLE sm_transform_jobs (
		name             TEXT PRIMARY KEY,
		arn              TEXT NOT NULL,
		request          TEXT NOT NULL,  -- the validated CreateTransformJob request, JSON
		creator          TEXT NOT NULL,  -- principal ARN
		status           TEXT NOT NULL,
		failure_reason   TEXT NOT NULL DEFAULT '',
		created          TEXT NOT NULL,
		modified         TEXT NOT NULL,
		transform_start  TEXT NOT NULL DEFAULT '',
		transform_end    TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX sm_transform_jobs_created ON sm_transform_jobs(created);
	CREATE UNIQUE INDEX sm_transform_jobs_name_nocase ON sm_transform_jobs(name COLLATE NOCASE);`

// ServeTransforms lets the service run transform jobs on runner. Until it
// is called, CreateTransformJob refuses with a clear message.
func (s *Service) ServeTransforms(runner TransformRunner) {
	s.mu.Lock()
	s.transforms = runner
	s.mu.Unlock()
}

func (s *Service) transformRunner() TransformRunner {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.transforms
}

func (s *Service) transformARN(name string) string {
	return fmt.Sprintf("arn:aws:sagemaker:%s:%s:transform-job/%s", s.region, s.iam.AccountID(), lower(name))
}

// transformKey is a transform job's key in s.running.
func transformKey(name string) string { return "transform-job/" + name }

// settleTransforms marks Failed what a previous run left running.
func (s *Service) settleTransforms(ctx context.Context) error {
	return s.settleJobs(ctx, "sm_transform_jobs", "transform_end", "transform jobs")
}

func (s *Service) finishTransform(name string, o TransformOutcome) {
	_, err := s.db.ExecContext(context.Background(), `UPDATE sm_transform_jobs SET status = ?, failure_reason = ?,
		transform_end = ?, modified = ? WHERE name = ?`, o.Status, clip(o.FailureReason), stamp(), stamp(), name)
	if err != nil {
		s.log.Error("record transform job end", "job", name, "err", err)
	}
}

func (s *Service) startTransform(tr TransformRunner, job *TransformJob) {
	s.goJob(transformKey(job.Name), func(ctx context.Context) func() {
		out := tr.RunTransform(ctx, job, func() { s.markStarted("sm_transform_jobs", "transform_start", job.Name) })
		if out.Status != Completed && s.baseCtx.Err() != nil && !errors.Is(context.Cause(ctx), ErrStopRequested) {
			out = TransformOutcome{Status: Failed, FailureReason: interruptedReason}
		}
		return func() {
			s.finishTransform(job.Name, out)
			s.log.Info("transform job ended", "job", job.Name, "status", out.Status, "reason", out.FailureReason)
		}
	})
}

func (s *Service) createTransformJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req CreateTransformJobRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	ctx := r.Context()
	arn := s.transformARN(req.TransformJobName)
	cond := map[string][]string{"sagemaker:InstanceTypes": {req.TransformResources.InstanceType}}
	if k := req.TransformResources.VolumeKmsKeyId; k != "" {
		cond["sagemaker:VolumeKmsKey"] = []string{k}
	}
	if k := req.TransformOutput.KmsKeyId; k != "" {
		cond["sagemaker:OutputKmsKey"] = []string{k}
	}
	if err := s.iam.Authorize(ctx, p, "sagemaker:CreateTransformJob", arn, tagConditions(cond, req.Tags)); err != nil {
		return nil, err
	}
	if err := s.authorizeCreateTags(ctx, p, arn, req.Tags); err != nil {
		return nil, err
	}
	model, _, err := s.loadModel(ctx, req.ModelName)
	if err != nil {
		return nil, err
	}
	// No iam:PassRole here, as on AWS: CreateModel checked it.
	if model.ExecutionRoleArn == "" {
		return nil, validation("Model %q has no ExecutionRoleArn: a transform job reads its input and writes its output with the model's execution role", req.ModelName)
	}
	role, err := s.iam.RoleByARN(ctx, model.ExecutionRoleArn)
	if err != nil {
		return nil, validation("The execution role %s of model %q cannot be used: %v", model.ExecutionRoleArn, req.ModelName, err)
	}
	tr := s.transformRunner()
	if tr == nil {
		return nil, validation("this convoy has no job executor configured, so it cannot run transform jobs")
	}
	raw, _ := json.Marshal(req)
	now := stamp()
	_, err = s.db.ExecContext(ctx, `INSERT INTO sm_transform_jobs (name, arn, request, creator, status, created, modified)
		VALUES (?, ?, ?, ?, 'InProgress', ?, ?)`, req.TransformJobName, arn, string(raw), p.ARN, now, now)
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return nil, awsproto.Errorf(http.StatusBadRequest, "ResourceInUse", "Job name must be unique within an AWS account and region, and a transform job with this name already exists (%s)", arn)
	}
	if err != nil {
		return nil, err
	}
	s.putTags(ctx, arn, req.Tags)
	s.startTransform(tr, &TransformJob{Name: req.TransformJobName, ARN: arn, Request: req, Model: *model, Role: role, Creator: p.ARN})
	return map[string]string{"TransformJobArn": arn}, nil
}

type transformRow struct {
	name, arn, request, status, reason string
	created, modified, start, end      string
}

func (s *Service) loadTransform(r *http.Request, name string) (*transformRow, error) {
	j := &transformRow{}
	err := s.db.QueryRowContext(r.Context(), `SELECT name, arn, request, status, failure_reason,
		created, modified, transform_start, transform_end FROM sm_transform_jobs WHERE name = ?`, name).Scan(&j.name, &j.arn, &j.request,
		&j.status, &j.reason, &j.created, &j.modified, &j.start, &j.end)
	if isNoRows(err) {
		return nil, validation("Could not find requested job with name %s", name)
	}
	return j, err
}

func (s *Service) describeTransformJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ TransformJobName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DescribeTransformJob", s.transformARN(req.TransformJobName), nil); err != nil {
		return nil, err
	}
	j, err := s.loadTransform(r, req.TransformJobName)
	if err != nil {
		return nil, err
	}
	out := describeOf(j.request, map[string]any{
		"TransformJobArn": j.arn, "TransformJobStatus": j.status,
		"CreationTime": epoch(j.created), "LastModifiedTime": epoch(j.modified),
	})
	// The defaults the job runs with, as SageMaker shows them.
	var cr CreateTransformJobRequest
	json.Unmarshal([]byte(j.request), &cr)
	out["MaxPayloadInMB"] = cr.payload() >> 20
	out["MaxConcurrentTransforms"] = cr.concurrency()
	out["BatchStrategy"] = cr.strategy()
	if v := epoch(j.start); v != nil {
		out["TransformStartTime"] = v
	}
	if v := epoch(j.end); v != nil {
		out["TransformEndTime"] = v
	}
	if j.reason != "" {
		out["FailureReason"] = j.reason
	}
	return out, nil
}

func (s *Service) listTransformJobs(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req listRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:ListTransformJobs", "*", nil); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(r.Context(), `SELECT name, arn, status, failure_reason, created, modified, transform_end FROM sm_transform_jobs`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var all []listed
	for rows.Next() {
		var name, arn, status, reason, created, modified, end string
		if err := rows.Scan(&name, &arn, &status, &reason, &created, &modified, &end); err != nil {
			return nil, err
		}
		m, _ := epoch(modified).(float64)
		sm := map[string]any{"TransformJobName": name, "TransformJobArn": arn, "TransformJobStatus": status,
			"CreationTime": epoch(created), "LastModifiedTime": m}
		if v := epoch(end); v != nil {
			sm["TransformEndTime"] = v
		}
		if reason != "" {
			sm["FailureReason"] = reason
		}
		all = append(all, listed{name: name, created: created, status: status, modified: m, summary: sm})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return list(&req, "TransformJobSummaries", all)
}

func (s *Service) stopTransformJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ TransformJobName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:StopTransformJob", s.transformARN(req.TransformJobName), nil); err != nil {
		return nil, err
	}
	j, err := s.loadTransform(r, req.TransformJobName)
	if err != nil {
		return nil, err
	}
	switch j.status {
	case Stopping, Stopped:
		return map[string]any{}, nil // SageMaker: stopping a stopping or stopped job is no error
	case InProgress:
	default:
		return nil, validation("The transform job %s is %s and cannot be stopped", req.TransformJobName, j.status)
	}
	if _, err := s.db.ExecContext(r.Context(), `UPDATE sm_transform_jobs SET status = 'Stopping', modified = ? WHERE name = ? AND status = 'InProgress'`,
		stamp(), req.TransformJobName); err != nil {
		return nil, err
	}
	if !s.stop(transformKey(req.TransformJobName)) {
		s.finishTransform(req.TransformJobName, TransformOutcome{Status: Stopped})
	}
	return map[string]any{}, nil
}
