package sagemaker

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// CreateTrainingJobRequest holds the fields convoy honours; the rest of the
// request is kept verbatim (Extra) and echoed by DescribeTrainingJob.
type CreateTrainingJobRequest struct {
	TrainingJobName                       string
	RoleArn                               string
	HyperParameters                       map[string]string `json:",omitempty"`
	AlgorithmSpecification                *AlgorithmSpecification
	InputDataConfig                       []Channel `json:",omitempty"`
	OutputDataConfig                      *OutputDataConfig
	ResourceConfig                        *ResourceConfig
	StoppingCondition                     *StoppingCondition
	Environment                           map[string]string `json:",omitempty"`
	EnableNetworkIsolation                bool
	EnableInterContainerTrafficEncryption bool
	Tags                                  []Tag `json:",omitempty"`
}

// AlgorithmSpecification names the training image.
type AlgorithmSpecification struct {
	TrainingImage       string
	TrainingInputMode   string
	ContainerEntrypoint []string `json:",omitempty"`
	ContainerArguments  []string `json:",omitempty"`
	AlgorithmName       string   `json:",omitempty"`
}

// Channel is one input channel.
type Channel struct {
	ChannelName string
	DataSource  struct {
		S3DataSource *struct {
			S3DataType             string
			S3Uri                  string
			S3DataDistributionType string `json:",omitempty"`
		} `json:",omitempty"`
	}
	ContentType       string         `json:",omitempty"`
	CompressionType   string         `json:",omitempty"`
	RecordWrapperType string         `json:",omitempty"`
	InputMode         string         `json:",omitempty"`
	ShuffleConfig     *ShuffleConfig `json:",omitempty"`
}

// ShuffleConfig asks for the channel's objects in a different order each
// epoch, decided by Seed.
type ShuffleConfig struct {
	Seed *int64
}

// Input modes (TrainingInputMode, Channel.InputMode).
const (
	FileMode     = "File"
	PipeMode     = "Pipe"
	FastFileMode = "FastFile"
)

// inputMode is the channel's input mode: its own, or the job's.
func inputMode(a *AlgorithmSpecification, c Channel) string {
	if c.InputMode != "" {
		return c.InputMode
	}
	return a.TrainingInputMode
}

// seed is the channel's ShuffleConfig.Seed, nil without one.
func (c Channel) seed() *int64 {
	if c.ShuffleConfig == nil {
		return nil
	}
	return c.ShuffleConfig.Seed
}

// sharded tells whether each host gets its own part of the channel's
// objects (S3DataDistributionType ShardedByS3Key).
func (c Channel) sharded() bool {
	return c.DataSource.S3DataSource != nil && c.DataSource.S3DataSource.S3DataDistributionType == "ShardedByS3Key"
}

// OutputDataConfig says where the model goes and under which key.
type OutputDataConfig struct {
	S3OutputPath    string
	KmsKeyId        string `json:",omitempty"`
	CompressionType string `json:",omitempty"`
}

// ResourceConfig sizes the job.
type ResourceConfig struct {
	InstanceType   string `json:",omitempty"`
	InstanceCount  int
	VolumeSizeInGB int
	VolumeKmsKeyId string `json:",omitempty"`
}

// StoppingCondition bounds the job's run time.
type StoppingCondition struct {
	MaxRuntimeInSeconds int `json:",omitempty"`
}

// Tag is a resource tag.
type Tag struct {
	Key, Value string
}

const (
	maxInstanceCount = 16 // one machine: hosts are containers
	maxRuntime       = 28 * 24 * 3600
)

var (
	jobNameRE = regexp.MustCompile(`^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$`)
	roleRE    = regexp.MustCompile(`^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$`)
	channelRE = regexp.MustCompile(`^[A-Za-z0-9.\-_]{1,64}$`)
	s3URIRE   = regexp.MustCompile(`^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/.*)?$`)
)

func validation(format string, args ...any) *awsproto.Error {
	return awsproto.Errorf(http.StatusBadRequest, "ValidationException", format, args...)
}

// validate checks a request as SageMaker does, with its messages' style.
func (r *CreateTrainingJobRequest) validate() error {
	if !jobNameRE.MatchString(r.TrainingJobName) {
		return validation("1 validation error detected: Value '%s' at 'trainingJobName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", r.TrainingJobName)
	}
	if !roleRE.MatchString(r.RoleArn) {
		return validation("1 validation error detected: Value '%s' at 'roleArn' failed to satisfy constraint: Member must satisfy regular expression pattern: ^arn:aws[a-z\\-]*:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+$", r.RoleArn)
	}
	a := r.AlgorithmSpecification
	if a == nil || a.TrainingImage == "" {
		return validation("AlgorithmSpecification.TrainingImage is required (convoy does not provide built-in algorithms)")
	}
	if !slices.Contains(inputModes, a.TrainingInputMode) {
		return enumError(a.TrainingInputMode, "algorithmSpecification.trainingInputMode", inputModes)
	}
	if r.OutputDataConfig == nil || !s3URIRE.MatchString(r.OutputDataConfig.S3OutputPath) {
		return validation("OutputDataConfig.S3OutputPath must be an s3://bucket/prefix URI")
	}
	rc := r.ResourceConfig
	if rc == nil {
		return validation("ResourceConfig is required")
	}
	if rc.InstanceCount < 1 || rc.InstanceCount > maxInstanceCount {
		return validation("ResourceConfig.InstanceCount must be between 1 and %d, not %d", maxInstanceCount, rc.InstanceCount)
	}
	if rc.VolumeSizeInGB < 1 {
		return validation("ResourceConfig.VolumeSizeInGB must be at least 1")
	}
	if r.StoppingCondition == nil || r.StoppingCondition.MaxRuntimeInSeconds < 1 || r.StoppingCondition.MaxRuntimeInSeconds > maxRuntime {
		return validation("StoppingCondition.MaxRuntimeInSeconds must be between 1 and %d", maxRuntime)
	}
	if len(r.HyperParameters) > 100 {
		return validation("HyperParameters may have at most 100 entries")
	}
	seen := map[string]bool{}
	for i, c := range r.InputDataConfig {
		if !channelRE.MatchString(c.ChannelName) {
			return validation("channel name %q must match [A-Za-z0-9.\\-_]{1,64}", c.ChannelName)
		}
		if seen[c.ChannelName] {
			return validation("channel %q appears twice", c.ChannelName)
		}
		seen[c.ChannelName] = true
		src := c.DataSource.S3DataSource
		if src == nil {
			return validation("channel %q: only S3DataSource is supported", c.ChannelName)
		}
		if src.S3DataType != "S3Prefix" && src.S3DataType != "ManifestFile" {
			return validation("channel %q: S3DataType must be S3Prefix or ManifestFile", c.ChannelName)
		}
		if !s3URIRE.MatchString(src.S3Uri) {
			return validation("channel %q: S3Uri %q is not an s3://bucket/prefix URI", c.ChannelName, src.S3Uri)
		}
		if err := c.validate(a, i); err != nil {
			return err
		}
	}
	return nil
}

var inputModes = []string{PipeMode, FileMode, FastFileMode}

// enumError is SageMaker's message for a value outside an enum.
func enumError(v, at string, set []string) error {
	if v == "" {
		return validation("1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be null", at)
	}
	return validation("1 validation error detected: Value '%s' at '%s' failed to satisfy constraint: Member must satisfy enum value set: [%s]", v, at, strings.Join(set, ", "))
}

// validate checks the channel's input mode and what depends on it: the
// channel is the i-th of InputDataConfig. Compression and RecordIO
// wrapping happen while streaming, so only Pipe mode has them, as on
// SageMaker.
func (c Channel) validate(a *AlgorithmSpecification, i int) error {
	at := func(field string) string { return fmt.Sprintf("inputDataConfig.%d.member.%s", i+1, field) }
	if c.InputMode != "" && !slices.Contains(inputModes, c.InputMode) {
		return enumError(c.InputMode, at("inputMode"), inputModes)
	}
	if d := c.DataSource.S3DataSource.S3DataDistributionType; d != "" && d != "FullyReplicated" && d != "ShardedByS3Key" {
		return enumError(d, at("dataSource.s3DataSource.s3DataDistributionType"), []string{"FullyReplicated", "ShardedByS3Key"})
	}
	if c.CompressionType != "" && c.CompressionType != "None" && c.CompressionType != "Gzip" {
		return enumError(c.CompressionType, at("compressionType"), []string{"None", "Gzip"})
	}
	if c.RecordWrapperType != "" && c.RecordWrapperType != "None" && c.RecordWrapperType != "RecordIO" {
		return enumError(c.RecordWrapperType, at("recordWrapperType"), []string{"None", "RecordIO"})
	}
	if c.ShuffleConfig != nil && c.ShuffleConfig.Seed == nil {
		return enumError("", at("shuffleConfig.seed"), nil)
	}
	if mode := inputMode(a, c); mode != PipeMode {
		if c.CompressionType == "Gzip" {
			return validation("Invalid compression type for channel %s: %s mode only supports NONE, got Gzip instead", c.ChannelName, mode)
		}
		if c.RecordWrapperType == "RecordIO" {
			return validation("Invalid record wrapper type for channel %s: %s mode only supports NONE, got RecordIO instead", c.ChannelName, mode)
		}
	}
	return nil
}

// ServeHTTP serves SageMaker.* operations.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "SageMaker.")
	p := iam.PrincipalFrom(r.Context())
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		awsproto.WriteError(w, r, awsproto.JSON, awsproto.Errorf(http.StatusBadRequest, "SerializationException", "read request: %v", err))
		return
	}
	var out any
	switch op {
	case "CreateTrainingJob":
		out, err = s.createTrainingJob(r, p, body)
	case "DescribeTrainingJob":
		out, err = s.describeTrainingJob(r, p, body)
	case "ListTrainingJobs":
		out, err = s.listTrainingJobs(r, p, body)
	case "AddTags":
		out, err = s.addTags(r, p, body)
	case "ListTags":
		out, err = s.listTags(r, p, body)
	case "DeleteTags":
		out, err = s.deleteTags(r, p, body)
	case "StopTrainingJob":
		out, err = s.stopTrainingJob(r, p, body)
	case "CreateProcessingJob":
		out, err = s.createProcessingJob(r, p, body)
	case "DescribeProcessingJob":
		out, err = s.describeProcessingJob(r, p, body)
	case "ListProcessingJobs":
		out, err = s.listProcessingJobs(r, p, body)
	case "StopProcessingJob":
		out, err = s.stopProcessingJob(r, p, body)
	case "CreateTransformJob":
		out, err = s.createTransformJob(r, p, body)
	case "DescribeTransformJob":
		out, err = s.describeTransformJob(r, p, body)
	case "ListTransformJobs":
		out, err = s.listTransformJobs(r, p, body)
	case "StopTransformJob":
		out, err = s.stopTransformJob(r, p, body)
	default:
		out, err = s.serveHosting(op, r, p, body)
	}
	if errors.Is(err, errUnknownOperation) {
		err = awsproto.Errorf(http.StatusBadRequest, "UnknownOperationException", "operation SageMaker.%s is not supported by this convoy", op)
	}
	if err != nil {
		var ae *awsproto.Error
		if !errors.As(err, &ae) {
			s.log.Error("sagemaker operation failed", "op", op, "err", err)
			ae = awsproto.Errorf(http.StatusInternalServerError, "InternalFailure", "internal error; request ID %s", awsproto.RequestID(r.Context()))
		}
		awsproto.WriteError(w, r, awsproto.JSON, ae)
		return
	}
	awsproto.WriteJSON(w, out)
}

func decode(body []byte, v any) error { return awsproto.DecodeJSON(body, v) }

func lower(s string) string { return strings.ToLower(s) }

func (s *Service) createTrainingJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req CreateTrainingJobRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	ctx := r.Context()
	arn := s.jobARN(req.TrainingJobName)
	cond := map[string][]string{
		"sagemaker:InterContainerTrafficEncryption": {strconv.FormatBool(req.EnableInterContainerTrafficEncryption)},
		"sagemaker:NetworkIsolation":                {strconv.FormatBool(req.EnableNetworkIsolation)},
		"sagemaker:InstanceTypes":                   {req.ResourceConfig.InstanceType},
	}
	if req.ResourceConfig.VolumeKmsKeyId != "" {
		cond["sagemaker:VolumeKmsKey"] = []string{req.ResourceConfig.VolumeKmsKeyId}
	}
	if req.OutputDataConfig.KmsKeyId != "" {
		cond["sagemaker:OutputKmsKey"] = []string{req.OutputDataConfig.KmsKeyId}
	}
	if err := s.iam.Authorize(ctx, p, "sagemaker:CreateTrainingJob", arn, tagConditions(cond, req.Tags)); err != nil {
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
	if s.runner == nil {
		return nil, validation("this convoy has no job executor configured, so it cannot run training jobs")
	}
	if err := s.checkInterContainerEncryption(req.EnableInterContainerTrafficEncryption, req.ResourceConfig.InstanceCount, "EnableInterContainerTrafficEncryption"); err != nil {
		return nil, err
	}
	if v, ok := s.runner.(Validator); ok {
		if err := v.Validate(ctx, &req); err != nil {
			return nil, err
		}
	}
	raw, _ := json.Marshal(req)
	now := stamp()
	_, err = s.db.ExecContext(ctx, `INSERT INTO sm_training_jobs (name, arn, request, creator, status, secondary, created, modified)
		VALUES (?, ?, ?, ?, 'InProgress', 'Starting', ?, ?)`, req.TrainingJobName, arn, string(raw), p.ARN, now, now)
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return nil, awsproto.Errorf(http.StatusBadRequest, "ResourceInUse", "Training job names must be unique within an AWS account and region, and a training job with this name already exists (%s)", arn)
	}
	if err != nil {
		return nil, err
	}
	for _, t := range req.Tags {
		s.db.ExecContext(ctx, `INSERT OR REPLACE INTO sm_tags (arn, key, value) VALUES (?, ?, ?)`, arn, t.Key, t.Value)
	}
	s.setSecondary(req.TrainingJobName, "Starting", "Preparing the instances for training")
	s.start(&Job{Name: req.TrainingJobName, ARN: arn, Request: req, Creator: p.ARN, Role: role})
	return map[string]string{"TrainingJobArn": arn}, nil
}

type jobRow struct {
	name, arn, request, status, secondary, reason, transitions, artifacts string
	created, modified, start, end                                         string
}

func (s *Service) load(r *http.Request, name string) (*jobRow, error) {
	j := &jobRow{}
	err := s.db.QueryRowContext(r.Context(), `SELECT name, arn, request, status, secondary, failure_reason, transitions, model_artifacts,
		created, modified, training_start, training_end FROM sm_training_jobs WHERE name = ?`, name).Scan(&j.name, &j.arn, &j.request,
		&j.status, &j.secondary, &j.reason, &j.transitions, &j.artifacts, &j.created, &j.modified, &j.start, &j.end)
	if isNoRows(err) {
		return nil, notFound("Requested resource not found: training job %s does not exist", name)
	}
	return j, err
}

func epoch(s string) any {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil
	}
	return float64(t.UnixMilli()) / 1000
}

func (s *Service) describeTrainingJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ TrainingJobName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DescribeTrainingJob", s.jobARN(req.TrainingJobName), nil); err != nil {
		return nil, err
	}
	j, err := s.load(r, req.TrainingJobName)
	if err != nil {
		return nil, err
	}
	out := describeOf(j.request, nil)
	out["TrainingJobArn"] = j.arn
	out["TrainingJobStatus"] = j.status
	out["SecondaryStatus"] = j.secondary
	out["CreationTime"] = epoch(j.created)
	out["LastModifiedTime"] = epoch(j.modified)
	var ts []Transition
	json.Unmarshal([]byte(j.transitions), &ts)
	out["SecondaryStatusTransitions"] = ts
	out["ModelArtifacts"] = map[string]string{"S3ModelArtifacts": j.artifacts}
	if j.reason != "" {
		out["FailureReason"] = j.reason
	}
	if v := epoch(j.start); v != nil {
		out["TrainingStartTime"] = v
		end := time.Now()
		if t, err := time.Parse(time.RFC3339Nano, j.end); err == nil {
			out["TrainingEndTime"] = epoch(j.end)
			end = t
		}
		st, _ := time.Parse(time.RFC3339Nano, j.start)
		secs := int(end.Sub(st).Seconds())
		out["TrainingTimeInSeconds"] = secs
		out["BillableTimeInSeconds"] = secs
	}
	return out, nil
}

func (s *Service) listTrainingJobs(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req listRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:ListTrainingJobs", "*", nil); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(r.Context(), `SELECT name, arn, status, secondary, created, modified, training_end FROM sm_training_jobs`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var all []listed
	for rows.Next() {
		var name, arn, status, secondary, created, modified, end string
		if err := rows.Scan(&name, &arn, &status, &secondary, &created, &modified, &end); err != nil {
			return nil, err
		}
		m, _ := epoch(modified).(float64)
		sm := map[string]any{"TrainingJobName": name, "TrainingJobArn": arn, "TrainingJobStatus": status, "SecondaryStatus": secondary,
			"CreationTime": epoch(created), "LastModifiedTime": m}
		if v := epoch(end); v != nil {
			sm["TrainingEndTime"] = v
		}
		all = append(all, listed{name: name, created: created, status: status, modified: m, summary: sm})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return list(&req, "TrainingJobSummaries", all)
}

func (s *Service) stopTrainingJob(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ TrainingJobName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:StopTrainingJob", s.jobARN(req.TrainingJobName), nil); err != nil {
		return nil, err
	}
	j, err := s.load(r, req.TrainingJobName)
	if err != nil {
		return nil, err
	}
	if j.status != InProgress {
		return nil, validation("The training job %s is %s and cannot be stopped", req.TrainingJobName, j.status)
	}
	if _, err := s.db.ExecContext(r.Context(), `UPDATE sm_training_jobs SET status = 'Stopping', stop_requested = 1, modified = ? WHERE name = ? AND status = 'InProgress'`,
		stamp(), req.TrainingJobName); err != nil {
		return nil, err
	}
	s.setSecondary(req.TrainingJobName, "Stopping", "Stopping the training job")
	if !s.stop(req.TrainingJobName) {
		s.finish(req.TrainingJobName, Outcome{Status: Stopped, Secondary: "Stopped"})
	}
	return map[string]any{}, nil
}

// pageOf returns one page of summaries under field, with SageMaker's
// opaque NextToken (the offset of the next page).
func pageOf(field string, summaries []map[string]any, token string, max int) (map[string]any, error) {
	start := 0
	if token != "" {
		b, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil {
			return nil, validation("NextToken is invalid")
		}
		if start, err = strconv.Atoi(string(b)); err != nil || start < 0 || start > len(summaries) {
			return nil, validation("NextToken is invalid")
		}
	}
	end := min(start+max, len(summaries))
	out := map[string]any{field: summaries[start:end]}
	if end < len(summaries) {
		out["NextToken"] = base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(end)))
	}
	return out, nil
}
