package sagemaker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// Processing jobs (CreateProcessingJob and friends) share the training
// jobs' statuses, running-job bookkeeping and restart rule, but have their
// own table and no secondary statuses.

// CreateProcessingJobRequest holds the fields convoy honours.
type CreateProcessingJobRequest struct {
	ProcessingJobName      string
	RoleArn                string
	ProcessingInputs       []ProcessingInput       `json:",omitempty"`
	ProcessingOutputConfig *ProcessingOutputConfig `json:",omitempty"`
	ProcessingResources    *ProcessingResources
	StoppingCondition      *StoppingCondition `json:",omitempty"`
	AppSpecification       *AppSpecification
	Environment            map[string]string `json:",omitempty"`
	NetworkConfig          *NetworkConfig    `json:",omitempty"`
	ExperimentConfig       json.RawMessage   `json:",omitempty"`
	Tags                   []Tag             `json:",omitempty"`
}

// ProcessingInput is one input staged into the container.
type ProcessingInput struct {
	InputName         string
	AppManaged        bool               `json:",omitempty"`
	S3Input           *ProcessingS3Input `json:",omitempty"`
	DatasetDefinition json.RawMessage    `json:",omitempty"`
}

// ProcessingS3Input is an input's S3 source and where it goes.
type ProcessingS3Input struct {
	S3Uri                  string
	LocalPath              string `json:",omitempty"`
	S3DataType             string
	S3InputMode            string `json:",omitempty"`
	S3DataDistributionType string `json:",omitempty"`
	S3CompressionType      string `json:",omitempty"`
}

// ProcessingOutputConfig lists the outputs and their KMS key.
type ProcessingOutputConfig struct {
	Outputs  []ProcessingOutput
	KmsKeyId string `json:",omitempty"`
}

// ProcessingOutput is one output uploaded when the job completes.
type ProcessingOutput struct {
	OutputName         string
	S3Output           *ProcessingS3Output `json:",omitempty"`
	FeatureStoreOutput json.RawMessage     `json:",omitempty"`
	AppManaged         bool                `json:",omitempty"`
}

// ProcessingS3Output is an output's container directory and S3 destination.
type ProcessingS3Output struct {
	S3Uri        string
	LocalPath    string `json:",omitempty"`
	S3UploadMode string
}

// ProcessingResources sizes the job.
type ProcessingResources struct {
	ClusterConfig *ProcessingClusterConfig
}

// ProcessingClusterConfig is the job's instances.
type ProcessingClusterConfig struct {
	InstanceCount  int
	InstanceType   string
	VolumeSizeInGB int
	VolumeKmsKeyId string `json:",omitempty"`
}

// AppSpecification is the processing container.
type AppSpecification struct {
	ImageUri            string
	ContainerEntrypoint []string `json:",omitempty"`
	ContainerArguments  []string `json:",omitempty"`
}

// NetworkConfig is the job's network settings.
type NetworkConfig struct {
	EnableInterContainerTrafficEncryption bool
	EnableNetworkIsolation                bool
	VpcConfig                             json.RawMessage `json:",omitempty"`
}

// ProcessingJob is what a ProcessingRunner gets to run.
type ProcessingJob struct {
	Name    string
	ARN     string
	Request CreateProcessingJobRequest
	Creator string
	Role    iam.Role
}

// ProcessingOutcome is how a processing job ended.
type ProcessingOutcome struct {
	Status        string // Completed, Failed or Stopped
	FailureReason string
	ExitMessage   string
}

// ProcessingRunner is implemented by a Runner that also runs processing
// jobs. RunProcessing calls started when the containers start, returns
// when the job has ended and must stop the job when ctx is done.
type ProcessingRunner interface {
	RunProcessing(ctx context.Context, job *ProcessingJob, started func()) ProcessingOutcome
}

// ProcessingValidator is the processing counterpart of Validator.
type ProcessingValidator interface {
	ValidateProcessing(ctx context.Context, req *CreateProcessingJobRequest) error
}

const (
	processingRoot          = "/opt/ml/processing/"
	maxProcessingRuntime    = 777600
	defaultProcessingRuntme = 24 * 3600
	maxProcessingIO         = 10
)

var processingMigration = `CREATE TABLE sm_processing_jobs (
		name             TEXT PRIMARY KEY,
		arn              TEXT NOT NULL,
		request          TEXT NOT NULL,  -- the validated CreateProcessingJob request, JSON
		creator          TEXT NOT NULL,  -- principal ARN
		status           TEXT NOT NULL,
		failure_reason   TEXT NOT NULL DEFAULT '',
		exit_message     TEXT NOT NULL DEFAULT '',
		created          TEXT NOT NULL,
		modified         TEXT NOT NULL,
		processing_start TEXT NOT NULL DEFAULT '',
		processing_end   TEXT NOT NULL DEFAULT '',
		stop_requested   INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX sm_processing_jobs_created ON sm_processing_jobs(created);`

// processingLocalPath checks a LocalPath: absolute, clean, under
// /opt/ml/processing/.
func processingLocalPath(p string) bool {
	return strings.HasPrefix(p, processingRoot) && len(p) > len(processingRoot) &&
		path.Clean(p) == strings.TrimSuffix(p, "/") && !strings.Contains(p, "/../")
}

// maxRuntime is the job's MaxRuntimeInSeconds, defaulted.
func (r *CreateProcessingJobRequest) maxRuntime() int {
	if r.StoppingCondition == nil {
		return defaultProcessingRuntme
	}
	return r.StoppingCondition.MaxRuntimeInSeconds
}

func (r *CreateProcessingJobRequest) validate() error {
	if !jobNameRE.MatchString(r.ProcessingJobName) {
		return validation("1 validation error detected: Value '%s' at 'processingJobName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", r.ProcessingJobName)
	}
	if !roleRE.MatchString(r.RoleArn) {
		return validation("1 validation error detected: Value '%s' at 'roleArn' failed to satisfy constraint: Member must satisfy regular expression pattern: ^arn:aws[a-z\\-]*:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+$", r.RoleArn)
	}
	if r.AppSpecification == nil || r.AppSpecification.ImageUri == "" {
		return validation("AppSpecification.ImageUri is required")
	}
	if r.ProcessingResources == nil || r.ProcessingResources.ClusterConfig == nil {
		return validation("ProcessingResources.ClusterConfig is required")
	}
	cc := r.ProcessingResources.ClusterConfig
	if cc.InstanceCount < 1 || cc.InstanceCount > maxInstanceCount {
		return validation("ProcessingResources.ClusterConfig.InstanceCount must be between 1 and %d, not %d", maxInstanceCount, cc.InstanceCount)
	}
	if cc.InstanceType == "" {
		return validation("ProcessingResources.ClusterConfig.InstanceType is required")
	}
	if cc.VolumeSizeInGB < 1 {
		return validation("ProcessingResources.ClusterConfig.VolumeSizeInGB must be at least 1")
	}
	if r.StoppingCondition != nil && (r.StoppingCondition.MaxRuntimeInSeconds < 1 || r.StoppingCondition.MaxRuntimeInSeconds > maxProcessingRuntime) {
		return validation("StoppingCondition.MaxRuntimeInSeconds must be between 1 and %d", maxProcessingRuntime)
	}
	if len(r.Environment) > 100 {
		return validation("Environment may have at most 100 entries")
	}
	if r.NetworkConfig != nil && len(r.NetworkConfig.VpcConfig) > 0 && string(r.NetworkConfig.VpcConfig) != "null" {
		return validation("NetworkConfig.VpcConfig is not supported by this convoy")
	}
	if len(r.ProcessingInputs) > maxProcessingIO {
		return validation("ProcessingInputs may have at most %d entries", maxProcessingIO)
	}
	var paths []string
	names := map[string]bool{}
	for _, in := range r.ProcessingInputs {
		if in.InputName == "" || names[in.InputName] {
			return validation("ProcessingInputs: InputName %q is empty or not unique", in.InputName)
		}
		names[in.InputName] = true
		s := in.S3Input
		if in.AppManaged || s == nil {
			return validation("input %q: only S3Input is supported (not DatasetDefinition or AppManaged)", in.InputName)
		}
		if !s3URIRE.MatchString(s.S3Uri) {
			return validation("input %q: S3Uri %q is not an s3://bucket/prefix URI", in.InputName, s.S3Uri)
		}
		if !processingLocalPath(s.LocalPath) {
			return validation("input %q: LocalPath %q must be a clean path under %s", in.InputName, s.LocalPath, processingRoot)
		}
		if s.S3DataType != "S3Prefix" {
			return validation("input %q: S3DataType %q is not supported by this convoy; use S3Prefix", in.InputName, s.S3DataType)
		}
		if s.S3InputMode != "" && s.S3InputMode != "File" {
			return validation("input %q: S3InputMode %q is not supported; convoy supports File", in.InputName, s.S3InputMode)
		}
		if s.S3DataDistributionType != "" && s.S3DataDistributionType != "FullyReplicated" {
			return validation("input %q: S3DataDistributionType %q is not supported by this convoy yet; use FullyReplicated", in.InputName, s.S3DataDistributionType)
		}
		if s.S3CompressionType != "" && s.S3CompressionType != "None" {
			return validation("input %q: S3CompressionType %q is not supported; convoy supports None", in.InputName, s.S3CompressionType)
		}
		paths = append(paths, s.LocalPath)
	}
	if oc := r.ProcessingOutputConfig; oc != nil {
		if len(oc.Outputs) > maxProcessingIO {
			return validation("ProcessingOutputConfig.Outputs may have at most %d entries", maxProcessingIO)
		}
		names := map[string]bool{}
		for _, o := range oc.Outputs {
			if o.OutputName == "" || names[o.OutputName] {
				return validation("ProcessingOutputConfig: OutputName %q is empty or not unique", o.OutputName)
			}
			names[o.OutputName] = true
			s := o.S3Output
			if o.AppManaged || s == nil {
				return validation("output %q: only S3Output is supported (not FeatureStoreOutput or AppManaged)", o.OutputName)
			}
			if !s3URIRE.MatchString(s.S3Uri) {
				return validation("output %q: S3Uri %q is not an s3://bucket/prefix URI", o.OutputName, s.S3Uri)
			}
			if !processingLocalPath(s.LocalPath) {
				return validation("output %q: LocalPath %q must be a clean path under %s", o.OutputName, s.LocalPath, processingRoot)
			}
			if s.S3UploadMode != "EndOfJob" {
				return validation("output %q: S3UploadMode %q is not supported by this convoy; use EndOfJob", o.OutputName, s.S3UploadMode)
			}
			paths = append(paths, s.LocalPath)
		}
	}
	for i, a := range paths {
		for _, b := range paths[i+1:] {
			a, b := strings.TrimSuffix(a, "/"), strings.TrimSuffix(b, "/")
			if a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/") {
				return validation("LocalPath %s and %s overlap; each input and output needs its own directory", a, b)
			}
		}
	}
	return nil
}

func (s *Service) processingARN(name string) string {
	return fmt.Sprintf("arn:aws:sagemaker:%s:%s:processing-job/%s", s.region, s.iam.AccountID(), lower(name))
}

// processingKey is a processing job's key in s.running (training jobs use
// their names, which cannot hold a "/").
func processingKey(name string) string { return "processing-job/" + name }

// settleProcessing marks Failed what a previous run left running.
func (s *Service) settleProcessing(ctx context.Context) error {
	return s.settleJobs(ctx, "sm_processing_jobs", "processing_end", "processing jobs")
}

func (s *Service) finishProcessing(name string, o ProcessingOutcome) {
	_, err := s.db.ExecContext(context.Background(), `UPDATE sm_processing_jobs SET status = ?, failure_reason = ?, exit_message = ?,
		processing_end = ?, modified = ? WHERE name = ?`, o.Status, o.FailureReason, o.ExitMessage, stamp(), stamp(), name)
	if err != nil {
		s.log.Error("record processing job end", "job", name, "err", err)
	}
}

func (s *Service) startProcessing(pr ProcessingRunner, job *ProcessingJob) {
	s.goJob(processingKey(job.Name), func(ctx context.Context) func() {
		out := pr.RunProcessing(ctx, job, func() { s.markStarted("sm_processing_jobs", "processing_start", job.Name) })
		return func() {
			s.finishProcessing(job.Name, out)
			s.log.Info("processing job ended", "job", job.Name, "status", out.Status, "reason", out.FailureReason)
		}
	})
}

func (s *Service) createProcessingJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req CreateProcessingJobRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	ctx := r.Context()
	arn := s.processingARN(req.ProcessingJobName)
	nc := req.NetworkConfig
	if nc == nil {
		nc = &NetworkConfig{}
	}
	cc := req.ProcessingResources.ClusterConfig
	cond := map[string][]string{
		"sagemaker:InterContainerTrafficEncryption": {strconv.FormatBool(nc.EnableInterContainerTrafficEncryption)},
		"sagemaker:NetworkIsolation":                {strconv.FormatBool(nc.EnableNetworkIsolation)},
		"sagemaker:InstanceTypes":                   {cc.InstanceType},
	}
	if cc.VolumeKmsKeyId != "" {
		cond["sagemaker:VolumeKmsKey"] = []string{cc.VolumeKmsKeyId}
	}
	if oc := req.ProcessingOutputConfig; oc != nil && oc.KmsKeyId != "" {
		cond["sagemaker:OutputKmsKey"] = []string{oc.KmsKeyId}
	}
	if err := s.iam.Authorize(ctx, p, "sagemaker:CreateProcessingJob", arn, tagConditions(cond, req.Tags)); err != nil {
		return nil, err
	}
	if err := s.authorizeCreateTags(ctx, p, arn, req.Tags); err != nil {
		return nil, err
	}
	role, err := s.iam.AuthorizePassRole(ctx, p, req.RoleArn, "sagemaker.amazonaws.com")
	if err != nil {
		var ae *awsproto.Error
		if errors.As(err, &ae) && ae.Code == "NoSuchEntity" {
			return nil, validation("Could not assume role %s. Please ensure that the role exists and allows principal 'sagemaker.amazonaws.com' to assume the role.", req.RoleArn)
		}
		return nil, err
	}
	pr, ok := s.runner.(ProcessingRunner)
	if s.runner == nil || !ok {
		return nil, validation("this convoy has no job executor configured, so it cannot run processing jobs")
	}
	if err := s.checkInterContainerEncryption(nc.EnableInterContainerTrafficEncryption, cc.InstanceCount, "NetworkConfig.EnableInterContainerTrafficEncryption"); err != nil {
		return nil, err
	}
	if v, ok := s.runner.(ProcessingValidator); ok {
		if err := v.ValidateProcessing(ctx, &req); err != nil {
			return nil, err
		}
	}
	raw, _ := json.Marshal(req)
	now := stamp()
	_, err = s.db.ExecContext(ctx, `INSERT INTO sm_processing_jobs (name, arn, request, creator, status, created, modified)
		VALUES (?, ?, ?, ?, 'InProgress', ?, ?)`, req.ProcessingJobName, arn, string(raw), p.ARN, now, now)
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return nil, awsproto.Errorf(http.StatusBadRequest, "ResourceInUse", "Processing job names must be unique within an AWS account and region, and a processing job with this name already exists (%s)", arn)
	}
	if err != nil {
		return nil, err
	}
	for _, t := range req.Tags {
		s.db.ExecContext(ctx, `INSERT OR REPLACE INTO sm_tags (arn, key, value) VALUES (?, ?, ?)`, arn, t.Key, t.Value)
	}
	s.startProcessing(pr, &ProcessingJob{Name: req.ProcessingJobName, ARN: arn, Request: req, Creator: p.ARN, Role: role})
	return map[string]string{"ProcessingJobArn": arn}, nil
}

type processingRow struct {
	name, arn, request, status, reason, exitMessage string
	created, modified, start, end                   string
}

func (s *Service) loadProcessing(r *http.Request, name string) (*processingRow, error) {
	j := &processingRow{}
	err := s.db.QueryRowContext(r.Context(), `SELECT name, arn, request, status, failure_reason, exit_message,
		created, modified, processing_start, processing_end FROM sm_processing_jobs WHERE name = ?`, name).Scan(&j.name, &j.arn, &j.request,
		&j.status, &j.reason, &j.exitMessage, &j.created, &j.modified, &j.start, &j.end)
	if isNoRows(err) {
		return nil, notFound("Requested resource not found: processing job %s does not exist", name)
	}
	return j, err
}

func (s *Service) describeProcessingJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ ProcessingJobName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DescribeProcessingJob", s.processingARN(req.ProcessingJobName), nil); err != nil {
		return nil, err
	}
	j, err := s.loadProcessing(r, req.ProcessingJobName)
	if err != nil {
		return nil, err
	}
	out := describeOf(j.request, nil)
	out["ProcessingJobArn"] = j.arn
	out["ProcessingJobStatus"] = j.status
	out["CreationTime"] = epoch(j.created)
	out["LastModifiedTime"] = epoch(j.modified)
	if v := epoch(j.start); v != nil {
		out["ProcessingStartTime"] = v
	}
	if v := epoch(j.end); v != nil {
		out["ProcessingEndTime"] = v
	}
	if j.reason != "" {
		out["FailureReason"] = j.reason
	}
	if j.exitMessage != "" {
		out["ExitMessage"] = j.exitMessage
	}
	return out, nil
}

func (s *Service) listProcessingJobs(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req listRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:ListProcessingJobs", "*", nil); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(r.Context(), `SELECT name, arn, status, failure_reason, exit_message, created, modified, processing_end FROM sm_processing_jobs`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var all []listed
	for rows.Next() {
		var name, arn, status, reason, exitMessage, created, modified, end string
		if err := rows.Scan(&name, &arn, &status, &reason, &exitMessage, &created, &modified, &end); err != nil {
			return nil, err
		}
		m, _ := epoch(modified).(float64)
		sm := map[string]any{"ProcessingJobName": name, "ProcessingJobArn": arn, "ProcessingJobStatus": status,
			"CreationTime": epoch(created), "LastModifiedTime": m}
		if v := epoch(end); v != nil {
			sm["ProcessingEndTime"] = v
		}
		if reason != "" {
			sm["FailureReason"] = reason
		}
		if exitMessage != "" {
			sm["ExitMessage"] = exitMessage
		}
		all = append(all, listed{name: name, created: created, status: status, modified: m, summary: sm})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return list(&req, "ProcessingJobSummaries", all)
}

func (s *Service) stopProcessingJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ ProcessingJobName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:StopProcessingJob", s.processingARN(req.ProcessingJobName), nil); err != nil {
		return nil, err
	}
	j, err := s.loadProcessing(r, req.ProcessingJobName)
	if err != nil {
		return nil, err
	}
	if j.status != InProgress {
		return nil, validation("The processing job %s is %s and cannot be stopped", req.ProcessingJobName, j.status)
	}
	if _, err := s.db.ExecContext(r.Context(), `UPDATE sm_processing_jobs SET status = 'Stopping', stop_requested = 1, modified = ? WHERE name = ? AND status = 'InProgress'`,
		stamp(), req.ProcessingJobName); err != nil {
		return nil, err
	}
	if !s.stop(processingKey(req.ProcessingJobName)) {
		s.finishProcessing(req.ProcessingJobName, ProcessingOutcome{Status: Stopped})
	}
	return map[string]any{}, nil
}
