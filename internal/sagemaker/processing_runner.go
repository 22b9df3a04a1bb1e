package sagemaker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"convoy/internal/executor"
	"convoy/internal/images"
)

// Processing jobs run under SageMaker's processing container contract:
// each input staged from S3 to its LocalPath (read-only), each output's
// LocalPath writable and uploaded file by file to its S3Uri when every host
// exits 0, /opt/ml/config/{processingjobconfig,resourceconfig}.json, and
// /opt/ml/output/message reported as ExitMessage. The staging, executor,
// stop and upload rules are the training jobs'.

var _ ProcessingRunner = (*LocalRunner)(nil)
var _ ProcessingValidator = (*LocalRunner)(nil)

// ValidateProcessing refuses a job whose image is not in the store.
func (r *LocalRunner) ValidateProcessing(_ context.Context, req *CreateProcessingJobRequest) error {
	if _, err := r.Images.Resolve(req.AppSpecification.ImageUri); err != nil {
		return validation("ImageUri %q cannot be used: %v", req.AppSpecification.ImageUri, err)
	}
	if nc := req.NetworkConfig; nc != nil {
		return r.validateMesh(nc.EnableInterContainerTrafficEncryption, req.ProcessingResources.ClusterConfig.InstanceCount)
	}
	return nil
}

// processingID names a processing job's directory and containers apart
// from a training job of the same name.
func processingID(name string) string {
	id := "pj-" + strings.ToLower(name)
	if len(id) <= 63 {
		return id
	}
	sum := sha256.Sum256([]byte(name))
	return id[:54] + "-" + hex.EncodeToString(sum[:4])
}

func procFailed(format string, args ...any) ProcessingOutcome {
	return ProcessingOutcome{Status: Failed, FailureReason: fmt.Sprintf(format, args...)}
}

// RunProcessing runs one processing job to its end.
func (r *LocalRunner) RunProcessing(ctx context.Context, job *ProcessingJob, started func()) (out ProcessingOutcome) {
	req := &job.Request
	// The shared pieces (download, wait) work on a jobRun; its Job carries
	// what they read: name, role and the run time limit.
	maxRT := req.maxRuntime()
	j := &jobRun{r: r, id: processingID(job.Name), report: func(string, string) {},
		job: &Job{Name: job.Name, ARN: job.ARN, Creator: job.Creator, Role: job.Role,
			Request: CreateTrainingJobRequest{StoppingCondition: &StoppingCondition{MaxRuntimeInSeconds: maxRT}}}}
	j.dir = filepath.Join(r.Dir, j.id)
	j.log = r.Log.With("processing_job", job.Name)
	for i := range req.ProcessingResources.ClusterConfig.InstanceCount {
		j.hosts = append(j.hosts, executor.HostName(i))
	}
	defer func() {
		if p := recover(); p != nil {
			j.log.Error("processing job runner panicked", "panic", p)
			out = procFailed("InternalServerError: convoy failed while running the job; see its log")
		}
		j.removeWork()
	}()
	stoppedEarly := func() ProcessingOutcome {
		if errors.As(context.Cause(ctx), new(*jobFailure)) {
			return procFailed("%s", failureOf(ctx))
		}
		if errors.Is(context.Cause(ctx), ErrStopRequested) {
			return ProcessingOutcome{Status: Stopped}
		}
		return procFailed("convoy stopped while this job was starting. Start the job again under a new name.")
	}

	image := req.AppSpecification.ImageUri
	img, err := r.Images.Resolve(image)
	if errors.Is(err, images.ErrNotFound) {
		return procFailed("ClientError: image %s is not in convoy's image store (%v); import it with `convoy images import FILE %s`", image, err, image)
	}
	if err != nil {
		return procFailed("ClientError: image %s: %v", image, err)
	}
	rootfs, err := r.Images.RootFS(ctx, img)
	if err != nil {
		return procFailed("InternalServerError: unpack image %s: %v", img.Ref, err)
	}
	if err := r.checkGate(ctx, img, rootfs); err != nil {
		return procFailed("%s", clip("ClientError: "+err.Error()))
	}
	uid, gid, err := imageUserIn(rootfs, img.Config.User)
	if err != nil {
		return procFailed("ClientError: image %s: %v", img.Ref, err)
	}

	life := time.Duration(maxRT)*time.Second + time.Hour
	var kc *kms.Client
	j.s3, kc = r.roleClients(job.Role, sessionName(job.Name), life)
	inside := executor.ContainerAddr(r.Listen)
	j.env = []string{
		"AWS_DEFAULT_REGION=" + r.Region, "AWS_REGION=" + r.Region,
		"AWS_ENDPOINT_URL=https://" + inside.String(),
	}
	if len(r.CAPEM) > 0 {
		j.env = append(j.env, "AWS_CA_BUNDLE=/opt/ml/config/"+caFile)
	}
	network := req.NetworkConfig
	if network == nil {
		network = &NetworkConfig{}
	}
	revokeCreds := func() {}
	if !network.EnableNetworkIsolation {
		var err error
		if j.credsURI, revokeCreds, err = r.registerCredentials(job.Role, sessionName(job.Name), time.Now().Add(life)); err != nil {
			return procFailed("InternalServerError: %v", err)
		}
		defer revokeCreds()
	}

	if reason, ok := j.mountVolume(ctx, req.ProcessingResources.ClusterConfig.VolumeKmsKeyId, req.ProcessingResources.ClusterConfig.VolumeSizeInGB, kc); !ok {
		return procFailed("%s", reason)
	}
	if err := prepareProcessingDirs(j, req, uid, gid); err != nil {
		return procFailed("InternalServerError: prepare job directories: %v", err)
	}
	if o, ok := stageProcessing(ctx, j, req); !ok {
		if ctx.Err() != nil {
			return stoppedEarly()
		}
		return o
	}
	if uid != 0 || gid != 0 {
		// The image user reads what root staged.
		if err := chownTree(filepath.Join(j.work, "input"), uid, gid); err != nil {
			return procFailed("InternalServerError: prepare input: %v", err)
		}
	}
	if ctx.Err() != nil {
		return stoppedEarly()
	}

	spec := executor.JobSpec{
		ID: j.id, Hosts: len(j.hosts), RootFS: rootfs,
		Args: processingArgs(req.AppSpecification, img.Config), Env: processingEnv(j, req, img.Config),
		WorkDir: img.Config.WorkingDir, UID: uid, GID: gid,
		Mounts:  func(host string) []executor.Mount { return processingMounts(j, req, host) },
		LogDir:  filepath.Join(j.dir, "logs"),
		Network: executor.Endpoint, Allow: []netip.AddrPort{r.Listen}, Credentials: r.CredentialsAddr,
	}
	if network.EnableNetworkIsolation {
		spec.Network, spec.Allow, spec.Credentials = executor.Isolated, nil, netip.AddrPort{}
	}
	if network.EnableInterContainerTrafficEncryption && len(j.hosts) > 1 {
		var done func()
		ctx, done = j.withMesh(ctx, &spec, time.Duration(maxRT)*time.Second)
		defer done()
	}
	ex, err := r.Executor.Start(ctx, spec)
	if err != nil {
		if ctx.Err() != nil {
			return stoppedEarly()
		}
		return procFailed("InternalServerError: start the processing containers: %v", err)
	}
	defer func() {
		if err := ex.Cleanup(); err != nil {
			j.log.Error("clean up processing containers", "err", err)
		}
	}()
	started()

	results, stopped := j.wait(ctx, ex)
	revokeCreds() // the containers have exited; the upload is convoy's
	msg := exitMessage(j)
	switch stopped {
	case "shutdown":
		return procFailed("convoy stopped while this job was running; its containers were stopped with it. Start the job again under a new name.")
	case stoppedFailed:
		o := procFailed("%s", failureOf(ctx))
		o.ExitMessage = msg
		return o
	case "MaxRuntimeExceeded":
		o := procFailed("MaxRuntimeExceeded: the job ran longer than StoppingCondition.MaxRuntimeInSeconds (%d s) and was stopped", maxRT)
		o.ExitMessage = msg
		return o
	case "":
	default:
		return ProcessingOutcome{Status: Stopped, ExitMessage: msg}
	}
	for _, res := range results {
		if res.Err == nil && res.ExitCode == 0 {
			continue
		}
		logHint := fmt.Sprintf("see %s", filepath.Join(j.dir, "logs", res.Host+".log"))
		var o ProcessingOutcome
		if res.Err != nil {
			o = procFailed("AlgorithmError: %s could not run: %v (%s)", res.Host, res.Err, logHint)
		} else {
			how := fmt.Sprintf("exit code %d", res.ExitCode)
			if res.Signal != "" {
				how += " (" + res.Signal + ")"
			}
			o = procFailed("AlgorithmError: %s exited with %s (%s)", res.Host, how, logHint)
		}
		if msg != "" {
			o.FailureReason += ": " + msg
			if len(o.FailureReason) > maxFailure {
				o.FailureReason = o.FailureReason[:maxFailure]
			}
		}
		o.ExitMessage = msg
		return o
	}
	if msg != "" && !utf8.ValidString(msg) {
		return procFailed("ClientError: /opt/ml/output/message is not UTF-8 encoded")
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), uploadTimeout)
	defer cancel()
	if err := uploadProcessing(uctx, j, req); err != nil {
		return ProcessingOutcome{Status: Failed, FailureReason: "ClientError: upload of the processing output failed: " + err.Error(), ExitMessage: msg}
	}
	return ProcessingOutcome{Status: Completed, ExitMessage: msg}
}

// exitMessage is the hosts' /opt/ml/output/message, concatenated, first 1 KB.
func exitMessage(j *jobRun) string {
	var b strings.Builder
	for _, h := range j.hosts {
		f, err := os.Open(filepath.Join(j.hostDir(h), "output", "message"))
		if err != nil {
			continue
		}
		data, _ := io.ReadAll(io.LimitReader(f, maxFailure))
		f.Close()
		b.Write(data)
	}
	s := b.String()
	if len(s) > maxFailure {
		s = s[:maxFailure]
	}
	return s
}

func inputDir(j *jobRun, i int) string { return filepath.Join(j.work, "input", strconv.Itoa(i)) }

func outputDir(j *jobRun, host string, i int) string {
	return filepath.Join(j.hostDir(host), "outputs", strconv.Itoa(i))
}

func outputs(req *CreateProcessingJobRequest) []ProcessingOutput {
	if req.ProcessingOutputConfig == nil {
		return nil
	}
	return req.ProcessingOutputConfig.Outputs
}

// prepareProcessingDirs makes the staging directories and, per host, the
// config, output and output directories, and writes the config files.
func prepareProcessingDirs(j *jobRun, req *CreateProcessingJobRequest, uid, gid uint32) error {
	if err := os.MkdirAll(filepath.Join(j.dir, "logs"), 0o700); err != nil {
		return err
	}
	for i := range req.ProcessingInputs {
		if err := os.MkdirAll(inputDir(j, i), 0o700); err != nil {
			return err
		}
	}
	// processingjobconfig.json is the job's description, as SageMaker
	// writes it.
	desc := map[string]any{}
	raw, _ := json.Marshal(req)
	json.Unmarshal(raw, &desc)
	delete(desc, "Tags")
	desc["ProcessingJobArn"] = j.job.ARN
	if _, ok := desc["StoppingCondition"]; !ok {
		desc["StoppingCondition"] = map[string]any{"MaxRuntimeInSeconds": req.maxRuntime()}
	}
	jobConfig, _ := json.Marshal(desc)
	for _, h := range j.hosts {
		hd := j.hostDir(h)
		writable := []string{filepath.Join(hd, "output")}
		for i := range outputs(req) {
			writable = append(writable, outputDir(j, h, i))
		}
		for _, d := range append([]string{filepath.Join(hd, "config")}, writable...) {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return err
			}
		}
		resource, _ := json.Marshal(map[string]any{"current_host": h, "hosts": j.hosts})
		files := map[string][]byte{"processingjobconfig.json": jobConfig, "resourceconfig.json": resource}
		if len(j.r.CAPEM) > 0 {
			files[caFile] = j.r.CAPEM
		}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(hd, "config", name), b, 0o644); err != nil {
				return err
			}
		}
		if uid != 0 || gid != 0 {
			for _, d := range writable {
				if err := os.Chown(d, int(uid), int(gid)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func chownTree(dir string, uid, gid uint32) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(uid), int(gid))
	})
}

// processingMounts are a host's /opt/ml directories and the job's inputs
// and outputs at their LocalPaths.
func processingMounts(j *jobRun, req *CreateProcessingJobRequest, host string) []executor.Mount {
	hd := j.hostDir(host)
	ms := []executor.Mount{
		{Source: filepath.Join(hd, "config"), Destination: "/opt/ml/config", ReadOnly: true},
		{Source: filepath.Join(hd, "output"), Destination: "/opt/ml/output"},
	}
	for i, in := range req.ProcessingInputs {
		ms = append(ms, executor.Mount{Source: inputDir(j, i), Destination: in.S3Input.LocalPath, ReadOnly: true})
	}
	for i, o := range outputs(req) {
		ms = append(ms, executor.Mount{Source: outputDir(j, host, i), Destination: o.S3Output.LocalPath})
	}
	return ms
}

// processingArgs is `docker run [--entrypoint E] IMAGE [ContainerArguments]`:
// without ContainerArguments the image's CMD follows its ENTRYPOINT (unless
// the entrypoint is overridden, which clears CMD as docker does).
func processingArgs(a *AppSpecification, cfg images.ImageConfig) []string {
	if len(a.ContainerEntrypoint) > 0 {
		return append(append([]string{}, a.ContainerEntrypoint...), a.ContainerArguments...)
	}
	args := append([]string{}, cfg.Entrypoint...)
	if len(a.ContainerArguments) > 0 {
		return append(args, a.ContainerArguments...)
	}
	return append(args, cfg.Cmd...)
}

// processingEnv: the image's, then the job's Environment, then the
// endpoint and the credentials variable, which a job cannot override
// (credentialVars).
func processingEnv(j *jobRun, req *CreateProcessingJobRequest, cfg images.ImageConfig) []string {
	var e envBuilder
	e.addList(cfg.Env)
	e.addMap(req.Environment)
	e.addList(j.env)
	if j.credsURI != "" {
		withCredentials(&e, j.credsURI)
	}
	return e.list()
}

// stageProcessing downloads every object under each input's S3 prefix into
// its staging directory; keys keep their path below the prefix's last "/".
func stageProcessing(ctx context.Context, j *jobRun, req *CreateProcessingJobRequest) (ProcessingOutcome, bool) {
	role := j.job.Role.ARN
	for i, in := range req.ProcessingInputs {
		uri := in.S3Input.S3Uri
		bucket, prefix := parseS3URI(uri)
		base := prefix[:strings.LastIndex(prefix, "/")+1]
		root, err := os.OpenRoot(inputDir(j, i))
		if err != nil {
			return procFailed("InternalServerError: %v", err), false
		}
		n := 0
		p := s3.NewListObjectsV2Paginator(j.s3, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				root.Close()
				return procFailed("ClientError: Data download failed: list %s for input %s with role %s: %s", uri, in.InputName, role, s3Error(err)), false
			}
			for _, obj := range page.Contents {
				key := aws.ToString(obj.Key)
				if strings.HasSuffix(key, "/") {
					continue
				}
				rel := strings.TrimPrefix(key, base)
				if !filepath.IsLocal(rel) {
					root.Close()
					return procFailed("ClientError: Data download failed: object key %q cannot be a file name under %s", key, in.S3Input.LocalPath), false
				}
				if err := j.download(ctx, root, bucket, key, rel); err != nil {
					root.Close()
					return procFailed("ClientError: Data download failed: s3://%s/%s for input %s with role %s: %s", bucket, key, in.InputName, role, s3Error(err)), false
				}
				n++
			}
		}
		root.Close()
		if n == 0 {
			return procFailed(`ClientError: No S3 objects found under S3 URL "%s" given in input %s. Please ensure that the bucket exists in the selected region (%s), that objects exist under that S3 prefix, and that the role "%s" has "s3:ListBucket" permissions on bucket "%s".`,
				uri, in.InputName, j.r.Region, role, bucket), false
		}
		j.log.Info("processing input staged", "input", in.InputName, "objects", n)
	}
	return ProcessingOutcome{}, true
}

// uploadProcessing uploads every regular file of each host's output
// directories to S3Uri/<path below LocalPath>, not following links (the
// tree is read through an os.Root).
func uploadProcessing(ctx context.Context, j *jobRun, req *CreateProcessingJobRequest) error {
	var kms string
	if req.ProcessingOutputConfig != nil {
		kms = req.ProcessingOutputConfig.KmsKeyId
	}
	for _, h := range j.hosts {
		for i, o := range outputs(req) {
			bucket, prefix := parseS3URI(o.S3Output.S3Uri)
			prefix = strings.TrimSuffix(prefix, "/")
			root, err := os.OpenRoot(outputDir(j, h, i))
			if err != nil {
				return err
			}
			err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return err
				}
				f, err := root.Open(p)
				if err != nil {
					return err
				}
				defer f.Close()
				info, err := f.Stat()
				if err != nil {
					return err
				}
				key := p
				if prefix != "" {
					key = prefix + "/" + p
				}
				in := &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: io.NewSectionReader(f, 0, info.Size()), ContentLength: aws.Int64(info.Size())}
				if kms != "" {
					in.ServerSideEncryption = s3types.ServerSideEncryptionAwsKms
					in.SSEKMSKeyId = &kms
				}
				if _, err := j.s3.PutObject(ctx, in); err != nil {
					return fmt.Errorf("output %s: s3://%s/%s with role %s: %s", o.OutputName, bucket, key, j.job.Role.ARN, s3Error(err))
				}
				return nil
			})
			root.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}
