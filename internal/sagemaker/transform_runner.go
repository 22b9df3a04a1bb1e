package sagemaker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"convoy/internal/executor"
	"convoy/internal/runtime"
)

// A LocalModelHost runs transform jobs too: the job's instances are a
// deployment of one variant, named after the job, started and health
// checked as an endpoint's are (same isolation, credentials, model data
// and logs), and stopped when the job ends, however it ends. Give
// transform jobs their own LocalModelHost (its own Dir), so that their
// files and logs never meet an endpoint's of the same name.

var _ TransformRunner = (*LocalModelHost)(nil)

// TransformLogGroup is the log group of every transform job; each
// instance's stream is <job name>/<instance id>, as on SageMaker.
const TransformLogGroup = "/aws/sagemaker/TransformJobs"

// RunTransform runs one transform job to its end.
func (h *LocalModelHost) RunTransform(ctx context.Context, job *TransformJob, started func()) (out TransformOutcome) {
	r := h.Runner
	req := &job.Request
	log := r.Log.With("transform_job", job.Name)
	defer func() {
		if p := recover(); p != nil {
			log.Error("transform job runner panicked", "panic", p)
			out = TransformOutcome{Status: Failed, FailureReason: "InternalServerError: convoy failed while running the job; see its log"}
		}
	}()
	ended := func(err error) TransformOutcome {
		switch {
		case err == nil:
			return TransformOutcome{Status: Completed}
		case errors.Is(context.Cause(ctx), ErrStopRequested):
			return TransformOutcome{Status: Stopped}
		case ctx.Err() != nil:
			return TransformOutcome{Status: Failed, FailureReason: interruptedReason}
		}
		return TransformOutcome{Status: Failed, FailureReason: clip(err.Error())}
	}

	s3c, _ := r.roleClients(job.Role, sessionName(job.Name), setupCredentialLife)
	objs, err := transformObjects(ctx, s3c, req, job.Role.ARN, r.Region)
	if err != nil {
		return ended(err)
	}

	c := job.Model.container()
	res := req.TransformResources
	d := &Deployment{ID: newDeploymentID(), Endpoint: job.Name, Variants: []DeployedVariant{{
		VariantName: job.Name, Weight: 1, InstanceCount: res.InstanceCount, InstanceType: res.InstanceType,
		ModelName: job.Model.ModelName, Image: c.Image, ModelDataUrl: c.ModelDataUrl, Environment: transformEnv(c.Environment, req),
		RoleARN: job.Model.ExecutionRoleArn, Role: job.Role, NetworkIsolation: job.Model.EnableNetworkIsolation,
		KmsKeyId: res.VolumeKmsKeyId,
	}}}
	running, err := h.Start(ctx, d, func() {})
	if err != nil {
		// Start speaks of endpoints; this is a job.
		reason := strings.NewReplacer(
			"primary container for production variant "+job.Name, "model container of transform job "+job.Name,
			"variant "+job.Name+": ", "",
			runtime.LogGroup(job.Name), TransformLogGroup,
			"for this endpoint", "for this job",
		).Replace(err.Error())
		return ended(errors.New(reason))
	}
	defer running.Stop() // the containers go, however the job ends
	started()
	var instances []transformInstance
	for _, v := range running.Variants() {
		for _, in := range v.Instances {
			instances = append(instances, transformInstance{id: in.ID, base: "http://" + in.Addr.String()})
		}
	}
	log.Info("transform job instances in service", "instances", len(instances), "objects", len(objs))

	outBucket, outPrefix := parseS3URI(req.TransformOutput.S3OutputPath)
	if outPrefix = strings.TrimSuffix(outPrefix, "/"); outPrefix != "" {
		outPrefix += "/"
	}
	dialer := &net.Dialer{Control: executor.DialExposed}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: dialer.DialContext,
		MaxIdleConnsPerHost: req.concurrency(), DisableCompression: true}}
	defer client.CloseIdleConnections()
	b := &batchRun{
		req: req, instances: instances, client: client,
		stream: func(id string) string { return job.Name + "/" + id + " of log group " + TransformLogGroup },
		open: func(ctx context.Context, o transformObject) (io.ReadCloser, error) {
			got, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: &o.bucket, Key: &o.key})
			if err != nil {
				return nil, fmt.Errorf("with role %s: %s", job.Role.ARN, s3Error(err))
			}
			return got.Body, nil
		},
		put: func(ctx context.Context, o transformObject, body io.Reader) error {
			key := outPrefix + o.rel + ".out"
			in := &s3.PutObjectInput{Bucket: &outBucket, Key: &key, Body: body}
			if a := req.TransformOutput.Accept; a != "" {
				in.ContentType = &a
			}
			if k := req.TransformOutput.KmsKeyId; k != "" {
				in.ServerSideEncryption, in.SSEKMSKeyId = s3types.ServerSideEncryptionAwsKms, &k
			}
			if _, err := s3c.PutObject(ctx, in); err != nil {
				return fmt.Errorf("s3://%s/%s with role %s: %s", outBucket, key, job.Role.ARN, s3Error(err))
			}
			return nil
		},
	}
	return ended(b.run(ctx, objs))
}

// transformEnv is the containers' environment: the model's, the job's,
// and the batch settings SageMaker tells a transform container.
func transformEnv(model map[string]string, req *CreateTransformJobRequest) map[string]string {
	env := map[string]string{}
	for k, v := range model {
		env[k] = v
	}
	for k, v := range req.Environment {
		env[k] = v
	}
	strategy := "SINGLE_RECORD"
	if req.strategy() == multiRecord {
		strategy = "MULTI_RECORD"
	}
	env["SAGEMAKER_BATCH"] = "true"
	env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = strconv.Itoa(req.payload() >> 20)
	env["SAGEMAKER_BATCH_STRATEGY"] = strategy
	env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = strconv.Itoa(req.concurrency())
	return env
}

// transformObjects lists the job's input: every object under the S3Prefix
// (its output named by its key below the prefix's last "/"), or each
// entry of the ManifestFile (named by the entry).
func transformObjects(ctx context.Context, s3c *s3.Client, req *CreateTransformJobRequest, role, region string) ([]transformObject, error) {
	src := req.TransformInput.DataSource.S3DataSource
	uri := src.S3Uri
	bucket, prefix := parseS3URI(uri)
	local := func(rel string) bool {
		return rel != "" && !strings.HasSuffix(rel, "/") && !strings.Contains("/"+rel+"/", "/../")
	}
	var objs []transformObject
	if src.S3DataType == "ManifestFile" {
		got, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &prefix})
		if err != nil {
			return nil, failuref("ClientError: cannot read manifest %s with role %s: %s", uri, role, s3Error(err))
		}
		data, err := io.ReadAll(io.LimitReader(got.Body, maxManifest+1))
		got.Body.Close()
		if err != nil {
			return nil, failuref("ClientError: cannot read manifest %s: %v", uri, err)
		}
		var entries []json.RawMessage
		var head struct {
			Prefix string `json:"prefix"`
		}
		if len(data) > maxManifest || json.Unmarshal(data, &entries) != nil || len(entries) == 0 ||
			json.Unmarshal(entries[0], &head) != nil || !s3URIRE.MatchString(head.Prefix) {
			return nil, failuref(`ClientError: manifest %s is not a SageMaker manifest: want a JSON array of at most 64 MiB starting with {"prefix": "s3://bucket/prefix/"} followed by relative keys`, uri)
		}
		mb, mp := parseS3URI(head.Prefix)
		for _, e := range entries[1:] {
			var rel string
			if json.Unmarshal(e, &rel) != nil || !local(rel) {
				return nil, failuref("ClientError: manifest %s: entry %s is not a relative key", uri, e)
			}
			objs = append(objs, transformObject{bucket: mb, key: mp + rel, rel: rel})
		}
	} else {
		base := prefix[:strings.LastIndex(prefix, "/")+1]
		p := s3.NewListObjectsV2Paginator(s3c, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, failuref("ClientError: cannot list %s with role %s: %s", uri, role, s3Error(err))
			}
			for _, obj := range page.Contents {
				key := aws.ToString(obj.Key)
				if strings.HasSuffix(key, "/") {
					continue // a "folder" marker
				}
				rel := strings.TrimPrefix(key, base)
				if !local(rel) {
					return nil, failuref("ClientError: object key %q cannot name an output under %s", key, req.TransformOutput.S3OutputPath)
				}
				objs = append(objs, transformObject{bucket: bucket, key: key, rel: rel})
			}
		}
	}
	if len(objs) == 0 {
		return nil, failuref(`ClientError: No S3 objects found under S3 URL "%s" given in input data source. Please ensure that the bucket exists in the selected region (%s), that objects exist under that S3 prefix, and that the role "%s" has "s3:ListBucket" permissions on bucket "%s".`,
			uri, region, role, bucket)
	}
	return objs, nil
}
