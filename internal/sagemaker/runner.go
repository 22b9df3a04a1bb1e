package sagemaker

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"convoy/internal/executor"
	"convoy/internal/iam"
	"convoy/internal/images"
	"convoy/internal/mesh"
)

// RoleCredentials mints temporary credentials for a role on behalf of the
// SageMaker service principal (sts.Service does).
type RoleCredentials interface {
	RoleCredentials(role iam.Role, session string, d time.Duration) (akid, secret, token string, exp time.Time)
}

// CredentialsEndpoint hands containers their role's credentials over the
// ECS and SageMaker container credentials protocol (credsvc.Server): a
// registration lasts until until (zero: until revoked) or revoke.
type CredentialsEndpoint interface {
	Register(role iam.Role, session string, until time.Time) (relativeURI string, revoke func())
}

// relativeURIVar points the AWS SDKs in a container to its registration
// at the credentials endpoint, resolved against http://169.254.170.2.
const relativeURIVar = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"

// credentialVars would make an AWS SDK use credentials other than the
// role's from the credentials endpoint: a container that has the endpoint
// gets none of them from its image or its job's Environment, so that its
// credentials are its role's, as when convoy set the keys itself.
var credentialVars = []string{
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
	"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
	relativeURIVar,
}

// checkCredentialsEndpoint tells whether containers can be given their
// role's credentials.
func (r *LocalRunner) checkCredentialsEndpoint() error {
	if r.CredentialsEndpoint == nil || !r.CredentialsAddr.IsValid() {
		return errors.New("this convoy has no container credentials endpoint, so it cannot give the containers their role's credentials; see convoy's log at start")
	}
	return nil
}

// registerCredentials registers role at the credentials endpoint for a
// container without network isolation.
func (r *LocalRunner) registerCredentials(role iam.Role, session string, until time.Time) (uri string, revoke func(), err error) {
	if err := r.checkCredentialsEndpoint(); err != nil {
		return "", nil, err
	}
	uri, revoke = r.CredentialsEndpoint.Register(role, session, until)
	return uri, revoke, nil
}

// withCredentials puts the container credentials variable in e, in place
// of any other credentials.
// roleClients are S3 and KMS clients of convoy's own API with fresh
// credentials of role, under the role session name session, lasting life:
// what convoy itself uses on a job's behalf (staging, uploads, volume
// keys), never handed to a container.
func (r *LocalRunner) roleClients(role iam.Role, session string, life time.Duration) (*s3.Client, *kms.Client) {
	akid, secret, token, _ := r.Creds.RoleCredentials(role, session, life)
	creds := credentials.NewStaticCredentialsProvider(akid, secret, token)
	return s3.New(s3.Options{Region: r.Region, BaseEndpoint: aws.String(r.Endpoint), HTTPClient: r.HTTP, UsePathStyle: true, Credentials: creds}),
		kms.New(kms.Options{Region: r.Region, BaseEndpoint: aws.String(r.Endpoint), HTTPClient: r.HTTP, Credentials: creds})
}

func withCredentials(e *envBuilder, uri string) {
	for _, k := range credentialVars {
		e.del(k)
	}
	e.set(relativeURIVar, uri)
}

// LocalRunner runs training jobs on this machine with an executor, under the
// SageMaker training container contract: input channels staged from S3 into
// /opt/ml/input/data/<channel> (File and FastFile mode) or streamed into
// FIFOs /opt/ml/input/data/<channel>_<epoch> (Pipe mode, pipe.go), the job's configuration in
// /opt/ml/input/config, the image run with the argument "train", and
// /opt/ml/model uploaded as model.tar.gz when every host exits 0.
//
// Every S3 call it makes for a job (staging, upload) goes through convoy's
// own endpoint with the job role's temporary credentials, so the role's
// policies, bucket policies and KMS key policies decide what a job may read
// and write, as on AWS. The containers get the endpoint (AWS_ENDPOINT_URL),
// convoy's CA (AWS_CA_BUNDLE) and, unless network-isolated, the role's
// credentials as SageMaker gives them: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI
// names the job's registration at the container credentials endpoint
// (CredentialsEndpoint), where the AWS SDKs fetch short-lived credentials
// and fetch new ones before they expire. No key is in their environment,
// and the registration is revoked when the job's containers have exited.
type LocalRunner struct {
	Executor executor.Executor
	Images   *images.Store
	// Creds mints the role credentials convoy itself uses for a job
	// (staging, volume key, upload, model download).
	Creds RoleCredentials
	// CredentialsEndpoint serves the role's credentials to the containers
	// of jobs without network isolation; they reach it at
	// executor.ServiceAddr:80, which the executor forwards to
	// CredentialsAddr, its loopback listener in this process. Without it,
	// such jobs fail.
	CredentialsEndpoint CredentialsEndpoint
	CredentialsAddr     netip.AddrPort
	// Dir holds one directory per job: Dir/<id>/{input,hosts,logs}. Only
	// logs outlive the job.
	Dir string
	// Endpoint is convoy's API as this process reaches it
	// (https://127.0.0.1:4443), HTTP a client that trusts its certificate.
	Endpoint string
	HTTP     *http.Client
	// Listen is convoy's listen address: jobs without network isolation may
	// reach it (as executor.ContainerAddr(Listen)) and nothing else.
	Listen netip.AddrPort
	// CAPEM is the CA bundle containers verify convoy with; it is placed at
	// /opt/ml/input/config/convoy-ca.pem. Empty: the system roots.
	CAPEM  []byte
	Region string
	// Volumes mounts each job's encrypted storage volume (staged input,
	// model, output). Required: a job without one fails rather than leave
	// its data in plaintext on disk.
	Volumes Volumes
	// Mesh carries the traffic between the hosts of jobs that ask for
	// inter-container traffic encryption (internode.go). Nil: such jobs
	// with more than one instance are refused.
	Mesh *mesh.Supervisor
	// StopGrace is how long a host has between SIGTERM and SIGKILL when a
	// job is stopped or runs out of time (SageMaker: 120 s).
	StopGrace time.Duration
	// Gate, if set, is asked about every image before a job or endpoint
	// runs it (internal/scan: known vulnerabilities); its error refuses the
	// image.
	Gate ImageGate
	Log  *slog.Logger
}

// ImageGate decides whether an image, unpacked at rootfs, may run.
type ImageGate interface {
	CheckImage(ctx context.Context, img images.Image, rootfs string) error
}

// checkGate asks r.Gate, if there is one, about img.
func (r *LocalRunner) checkGate(ctx context.Context, img images.Image, rootfs string) error {
	if r.Gate == nil {
		return nil
	}
	return r.Gate.CheckImage(ctx, img, rootfs)
}

// clip cuts a failure reason to SageMaker's 1,024 characters.
func clip(s string) string {
	if len(s) <= maxFailure {
		return s
	}
	return strings.ToValidUTF8(s[:maxFailure-3], "") + "..."
}

var _ Validator = (*LocalRunner)(nil)

const (
	defaultStopGrace = 120 * time.Second
	// shutdownGrace bounds the grace when convoy itself is stopping.
	shutdownGrace = 10 * time.Second
	caFile        = "convoy-ca.pem"
	maxFailure    = 1024
	uploadTimeout = time.Hour
)

// Validate refuses a job whose image is not in the store or whose hosts
// cannot be connected as it asks. Every input mode, compression and record
// wrapping that the request's validation lets through can be served.
func (r *LocalRunner) Validate(_ context.Context, req *CreateTrainingJobRequest) error {
	if _, err := r.Images.Resolve(req.AlgorithmSpecification.TrainingImage); err != nil {
		return validation("TrainingImage %q cannot be used: %v", req.AlgorithmSpecification.TrainingImage, err)
	}
	return r.validateMesh(req.EnableInterContainerTrafficEncryption, req.ResourceConfig.InstanceCount)
}

// jobDirsToRemove are what a job's directory holds besides its logs and
// its volume.
var jobDirsToRemove = []string{"input", "hosts", "upload"}

// volumeDir is where a job's volume is mounted in its directory.
const volumeDir = "volume"

// Volumes mounts encrypted job volumes; see internal/volume.
type Volumes interface {
	// Mount creates an encrypted volume of size bytes with password
	// material key and mounts its plaintext view at base (which must not
	// exist). unbounded says why the size is not enforced, if it is not.
	Mount(ctx context.Context, base string, key []byte, size int64) (unbounded, err error)
	// Remove unmounts the volume at base, if mounted, and deletes it.
	Remove(base string) error
	// Mechanism describes the encryption, for the job's log.
	Mechanism() string
}

// mountVolume gives the job its encrypted volume, keyed by a data key of
// kmsKeyID (through convoy's KMS with the job role's credentials, so the
// role needs kms:GenerateDataKey on it) or, without a key id, by 32 random
// bytes that only this process holds. Either way the key is never written
// down; the volume is deleted when the job ends.
func (j *jobRun) mountVolume(ctx context.Context, kmsKeyID string, sizeGB int, kc *kms.Client) (string, bool) {
	return j.mountVolumeAt(ctx, volumeDir, kmsKeyID, sizeGB, kc)
}

// mountVolumeAt is mountVolume with the volume at j.dir/name.
func (j *jobRun) mountVolumeAt(ctx context.Context, name, kmsKeyID string, sizeGB int, kc *kms.Client) (string, bool) {
	if j.r.Volumes == nil {
		return "InternalServerError: this convoy has no encrypted volumes configured; it runs no job with plaintext storage", false
	}
	key := make([]byte, 32)
	if kmsKeyID == "" {
		rand.Read(key)
	} else {
		out, err := kc.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
			KeyId: aws.String(kmsKeyID), KeySpec: kmstypes.DataKeySpecAes256,
			EncryptionContext: map[string]string{"aws:sagemaker:resource": j.job.ARN},
		})
		if err != nil {
			return fmt.Sprintf("ClientError: VolumeKmsKeyId %s cannot be used with the job's role: %s", kmsKeyID, s3Error(err)), false
		}
		key = out.Plaintext
	}
	defer clear(key)
	base := filepath.Join(j.dir, name)
	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return fmt.Sprintf("InternalServerError: job directory: %v", err), false
	}
	if err := j.r.Volumes.Remove(base); err != nil { // left by a crash
		return fmt.Sprintf("InternalServerError: remove an old volume: %v", err), false
	}
	unbounded, err := j.r.Volumes.Mount(ctx, base, key, int64(sizeGB)<<30)
	if err != nil {
		return fmt.Sprintf("InternalServerError: create the encrypted storage volume: %v", err), false
	}
	if unbounded != nil {
		j.log.Warn("storage volume size not enforced", "volume_size_gb", sizeGB, "err", unbounded)
	}
	j.work = base
	keyName := "a key held only in memory"
	if kmsKeyID != "" {
		keyName = "a data key of " + kmsKeyID
	}
	j.log.Info("storage volume encrypted", "mechanism", j.r.Volumes.Mechanism(), "key", keyName, "size_gb", sizeGB)
	return "", true
}

// removeWork deletes the job's volume and staged data; its logs stay.
func (j *jobRun) removeWork() {
	if j.r.Volumes != nil {
		if err := j.r.Volumes.Remove(filepath.Join(j.dir, volumeDir)); err != nil {
			j.log.Error("remove the job's volume", "err", err)
		}
	}
	for _, d := range jobDirsToRemove {
		os.RemoveAll(filepath.Join(j.dir, d))
	}
}

// Tidy removes what jobs of an earlier convoy process left in Dir (staged
// input, outputs) when it stopped without finishing them; logs stay. Call it
// at start, before any job runs.
func (r *LocalRunner) Tidy() error {
	entries, err := os.ReadDir(r.Dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if r.Volumes != nil {
			errs = append(errs, r.Volumes.Remove(filepath.Join(r.Dir, e.Name(), volumeDir)))
		}
		for _, d := range jobDirsToRemove {
			errs = append(errs, os.RemoveAll(filepath.Join(r.Dir, e.Name(), d)))
		}
	}
	return errors.Join(errs...)
}

// jobRun is the state of one Run.
type jobRun struct {
	r      *LocalRunner
	job    *Job
	id     string
	dir    string // DATA/jobs/<id>: logs, and the volume
	work   string // the job's encrypted volume: input, hosts, upload
	hosts  []string
	s3     *s3.Client
	env    []string // region, endpoint and CA, for the containers
	report Reporter
	log    *slog.Logger
	// credsURI is the containers' registration at the credentials
	// endpoint; "" for a network-isolated job.
	credsURI string
	uid, gid uint32 // the image user
	// pipes stream the Pipe-mode channels, one per channel and host.
	pipes []*pipeChannel
}

func failed(format string, args ...any) Outcome {
	return Outcome{Status: Failed, Secondary: Failed, FailureReason: fmt.Sprintf(format, args...)}
}

// Run runs one job to its end. It never returns without a status and, for
// Failed, a reason.
func (r *LocalRunner) Run(ctx context.Context, job *Job, report Reporter) (out Outcome) {
	req := &job.Request
	j := &jobRun{r: r, job: job, id: strings.ToLower(job.Name), report: report}
	j.dir = filepath.Join(r.Dir, j.id)
	j.log = r.Log.With("job", job.Name)
	for i := range req.ResourceConfig.InstanceCount {
		j.hosts = append(j.hosts, executor.HostName(i))
	}
	defer func() {
		if p := recover(); p != nil {
			j.log.Error("training job runner panicked", "panic", p)
			out = failed("InternalServerError: convoy failed while running the job; see its log")
		}
		// The logs stay for the user; staged data and outputs go.
		j.removeWork()
	}()

	report("Starting", "Preparing the instances for training")
	img, err := r.Images.Resolve(req.AlgorithmSpecification.TrainingImage)
	if errors.Is(err, images.ErrNotFound) {
		return failed("ClientError: training image %s is not in convoy's image store (%v); import it with `convoy images import FILE %s`",
			req.AlgorithmSpecification.TrainingImage, err, req.AlgorithmSpecification.TrainingImage)
	}
	if err != nil {
		return failed("ClientError: training image %s: %v", req.AlgorithmSpecification.TrainingImage, err)
	}
	rootfs, err := r.Images.RootFS(ctx, img)
	if err != nil {
		return failed("InternalServerError: unpack training image %s: %v", img.Ref, err)
	}
	if err := r.checkGate(ctx, img, rootfs); err != nil {
		return failed("%s", clip("ClientError: "+err.Error()))
	}
	uid, gid, err := imageUserIn(rootfs, img.Config.User)
	if err != nil {
		return failed("ClientError: training image %s: %v", img.Ref, err)
	}
	j.uid, j.gid = uid, gid

	// convoy's own credentials for the job last all of it: staging,
	// training, upload. The containers fetch theirs from the credentials
	// endpoint, registered for as long, and revoked when they have exited.
	life := time.Duration(req.StoppingCondition.MaxRuntimeInSeconds)*time.Second + time.Hour
	var kc *kms.Client
	j.s3, kc = r.roleClients(job.Role, sessionName(job.Name), life)
	inside := executor.ContainerAddr(r.Listen)
	j.env = []string{
		"AWS_DEFAULT_REGION=" + r.Region, "AWS_REGION=" + r.Region,
		"AWS_ENDPOINT_URL=https://" + inside.String(),
	}
	if len(r.CAPEM) > 0 {
		j.env = append(j.env, "AWS_CA_BUNDLE=/opt/ml/input/config/"+caFile)
	}
	revokeCreds := func() {}
	if !req.EnableNetworkIsolation {
		var err error
		if j.credsURI, revokeCreds, err = r.registerCredentials(job.Role, sessionName(job.Name), time.Now().Add(life)); err != nil {
			return failed("InternalServerError: %v", err)
		}
		defer revokeCreds()
	}

	if reason, ok := j.mountVolume(ctx, req.ResourceConfig.VolumeKmsKeyId, req.ResourceConfig.VolumeSizeInGB, kc); !ok {
		return failed("%s", reason)
	}
	if err := j.prepareDirs(uid, gid); err != nil {
		return failed("InternalServerError: prepare job directories: %v", err)
	}
	report("Downloading", "Downloading input data")
	if o, ok := j.stage(ctx); !ok {
		return o
	}
	if ctx.Err() != nil {
		return j.stoppedBeforeTraining(ctx)
	}

	report("Training", "Training image download completed. Training in progress.")
	// A Pipe-mode stream that fails stops the job with a jobFailure.
	ctx, failJob := context.WithCancelCause(ctx)
	defer failJob(nil)
	spec := executor.JobSpec{
		ID: j.id, Hosts: len(j.hosts), RootFS: rootfs,
		Args: containerArgs(req.AlgorithmSpecification, img.Config), Env: j.containerEnv(img.Config),
		HostEnv: func(host string) []string { return []string{"SM_CURRENT_HOST=" + host} },
		WorkDir: img.Config.WorkingDir, UID: uid, GID: gid,
		Mounts: j.mounts, LogDir: filepath.Join(j.dir, "logs"),
		Network: executor.Endpoint, Allow: []netip.AddrPort{r.Listen}, Credentials: r.CredentialsAddr,
	}
	if req.EnableNetworkIsolation {
		// No endpoint either: the container gets no AWS access at all, as on
		// SageMaker, where isolated containers cannot make outbound calls.
		spec.Network, spec.Allow, spec.Credentials = executor.Isolated, nil, netip.AddrPort{}
	}
	if req.EnableInterContainerTrafficEncryption && len(j.hosts) > 1 {
		var done func()
		ctx, done = j.withMesh(ctx, &spec, time.Duration(req.StoppingCondition.MaxRuntimeInSeconds)*time.Second)
		defer done()
	}
	ex, err := r.Executor.Start(ctx, spec)
	if err != nil {
		if ctx.Err() != nil {
			return j.stoppedBeforeTraining(ctx)
		}
		return failed("InternalServerError: start the training containers: %v", err)
	}
	defer func() {
		if err := ex.Cleanup(); err != nil {
			j.log.Error("clean up training containers", "err", err)
		}
	}()

	stopPipes := j.streamPipes(ctx, failJob)
	defer stopPipes()
	results, stopped := j.wait(ctx, ex)
	stopPipes()
	revokeCreds() // the containers have exited; the upload is convoy's
	var end Outcome
	switch {
	case stopped == "shutdown":
		return failed("convoy stopped while this job was running; its containers were stopped with it. Start the job again under a new name.")
	case stopped == stoppedFailed:
		return failed("%s", failureOf(ctx))
	case stopped != "":
		end = Outcome{Status: Stopped, Secondary: stopped}
	default:
		for _, res := range results {
			if o, bad := j.hostFailure(res); bad {
				return o
			}
		}
		end = Outcome{Status: Completed, Secondary: Completed}
	}
	report("Uploading", "Uploading generated training model")
	// A stopped job's model is uploaded too (SageMaker gives the algorithm
	// its grace period to save it), so the upload outlives ctx.
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), uploadTimeout)
	defer cancel()
	artifacts, err := j.upload(uctx)
	if err != nil {
		return failed("ClientError: upload of the training output failed: %v", err)
	}
	end.ModelArtifacts = artifacts
	return end
}

// sessionName is the role session name for a job (2 to 64 characters).
func sessionName(job string) string {
	if len(job) < 2 {
		return "SageMaker-" + job
	}
	return job
}

func (j *jobRun) stoppedBeforeTraining(ctx context.Context) Outcome {
	if errors.As(context.Cause(ctx), new(*jobFailure)) {
		return failed("%s", failureOf(ctx))
	}
	if errors.Is(context.Cause(ctx), ErrStopRequested) {
		return Outcome{Status: Stopped, Secondary: Stopped}
	}
	return failed("convoy stopped while this job was starting. Start the job again under a new name.")
}

func (j *jobRun) hostDir(host string) string { return filepath.Join(j.work, "hosts", host) }

// dataDir is a host's /opt/ml/input/data: its Pipe-mode FIFOs, and the
// mount points of its File-mode channels.
func (j *jobRun) dataDir(host string) string { return filepath.Join(j.hostDir(host), "data") }

// channelDir is where a File or FastFile channel is staged for a host: one
// directory that every host mounts, or one per host when the channel is
// sharded over several.
func (j *jobRun) channelDir(c Channel, host string) string {
	if c.sharded() && len(j.hosts) > 1 {
		return filepath.Join(j.work, "input", "shards", host, c.ChannelName)
	}
	return filepath.Join(j.work, "input", "data", c.ChannelName)
}

// prepareDirs makes the shared input and, per host, config, model and
// output directories; what the containers write belongs to the image user.
func (j *jobRun) prepareDirs(uid, gid uint32) error {
	req := &j.job.Request
	for _, d := range []string{filepath.Join(j.work, "input", "data"), filepath.Join(j.dir, "logs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	for _, c := range req.InputDataConfig {
		if inputMode(req.AlgorithmSpecification, c) == PipeMode {
			continue
		}
		for _, h := range j.hosts {
			// Each host mounts the staged channel over its mount point.
			for _, d := range []string{j.channelDir(c, h), filepath.Join(j.dataDir(h), c.ChannelName)} {
				if err := os.MkdirAll(d, 0o700); err != nil {
					return err
				}
			}
		}
	}
	hps := map[string]string{}
	for k, v := range req.HyperParameters {
		hps[k] = v
	}
	dataConfig := map[string]any{}
	for _, c := range req.InputDataConfig {
		m := map[string]string{"TrainingInputMode": inputMode(req.AlgorithmSpecification, c), "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
		if c.RecordWrapperType != "" {
			m["RecordWrapperType"] = c.RecordWrapperType
		}
		if c.ContentType != "" {
			m["ContentType"] = c.ContentType
		}
		if d := c.DataSource.S3DataSource.S3DataDistributionType; d != "" {
			m["S3DistributionType"] = d
		}
		dataConfig[c.ChannelName] = m
	}
	instanceType := req.ResourceConfig.InstanceType
	for _, h := range j.hosts {
		hd := j.hostDir(h)
		for _, d := range []string{"config", "data", "model", "output", filepath.Join("output", "data")} {
			if err := os.MkdirAll(filepath.Join(hd, d), 0o700); err != nil {
				return err
			}
		}
		resource := map[string]any{
			"current_host": h, "current_instance_type": instanceType, "current_group_name": "homogeneousCluster",
			"hosts": j.hosts, "network_interface_name": "eth0",
			"instance_groups": []any{map[string]any{"instance_group_name": "homogeneousCluster", "instance_type": instanceType, "hosts": j.hosts}},
		}
		files := map[string]any{"hyperparameters.json": hps, "resourceconfig.json": resource, "inputdataconfig.json": dataConfig}
		for name, v := range files {
			b, _ := json.Marshal(v)
			if err := os.WriteFile(filepath.Join(hd, "config", name), b, 0o644); err != nil {
				return err
			}
		}
		if len(j.r.CAPEM) > 0 {
			if err := os.WriteFile(filepath.Join(hd, "config", caFile), j.r.CAPEM, 0o644); err != nil {
				return err
			}
		}
		if uid != 0 || gid != 0 {
			for _, d := range []string{"model", "output", filepath.Join("output", "data")} {
				if err := os.Chown(filepath.Join(hd, d), int(uid), int(gid)); err != nil {
					return err
				}
			}
		}
	}
	if uid == 0 && gid == 0 {
		return nil
	}
	// The image user reads what root staged: everything under input, and
	// the hosts' data directories (the FIFOs get the user as they are made).
	dirs := []string{filepath.Join(j.work, "input")}
	for _, h := range j.hosts {
		dirs = append(dirs, j.dataDir(h))
	}
	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, int(uid), int(gid))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// mounts are a host's /opt/ml directories. Its /opt/ml/input/data is its
// own, so that its Pipe-mode FIFOs are; the File-mode channels are mounted
// inside it (the executor mounts parents first).
func (j *jobRun) mounts(host string) []executor.Mount {
	hd := j.hostDir(host)
	ms := []executor.Mount{
		{Source: filepath.Join(hd, "config"), Destination: "/opt/ml/input/config", ReadOnly: true},
		{Source: j.dataDir(host), Destination: "/opt/ml/input/data", ReadOnly: true},
	}
	for _, c := range j.job.Request.InputDataConfig {
		if inputMode(j.job.Request.AlgorithmSpecification, c) != PipeMode {
			ms = append(ms, executor.Mount{Source: j.channelDir(c, host), Destination: "/opt/ml/input/data/" + c.ChannelName, ReadOnly: true})
		}
	}
	return append(ms,
		executor.Mount{Source: filepath.Join(hd, "model"), Destination: "/opt/ml/model"},
		executor.Mount{Source: filepath.Join(hd, "output"), Destination: "/opt/ml/output"},
	)
}

// containerArgs is what SageMaker runs: ContainerEntrypoint and
// ContainerArguments when given, else the image's ENTRYPOINT with the
// single argument "train" (which replaces the image's CMD).
func containerArgs(a *AlgorithmSpecification, cfg images.ImageConfig) []string {
	if len(a.ContainerEntrypoint) > 0 {
		return append(append([]string{}, a.ContainerEntrypoint...), a.ContainerArguments...)
	}
	if len(cfg.Entrypoint) == 0 {
		return append([]string{"train"}, a.ContainerArguments...)
	}
	args := append([]string{}, cfg.Entrypoint...)
	if len(a.ContainerArguments) > 0 {
		return append(args, a.ContainerArguments...)
	}
	return append(args, "train")
}

// containerEnv: the image's, then the job's Environment, then SageMaker's
// own variables and the credentials variable, which a job cannot override
// (credentialVars).
func (j *jobRun) containerEnv(cfg images.ImageConfig) []string {
	req := &j.job.Request
	var e envBuilder
	e.addList(cfg.Env)
	e.addMap(req.Environment)
	set := e.set
	var channels []string
	for _, c := range req.InputDataConfig {
		channels = append(channels, c.ChannelName)
		set("SM_CHANNEL_"+strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(c.ChannelName)), "/opt/ml/input/data/"+c.ChannelName)
	}
	js := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	hps := req.HyperParameters
	if hps == nil {
		hps = map[string]string{}
	}
	if channels == nil {
		channels = []string{}
	}
	set("TRAINING_JOB_NAME", j.job.Name)
	set("TRAINING_JOB_ARN", j.job.ARN)
	set("SM_MODEL_DIR", "/opt/ml/model")
	set("SM_INPUT_DIR", "/opt/ml/input")
	set("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")
	set("SM_OUTPUT_DIR", "/opt/ml/output")
	set("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")
	set("SM_CHANNELS", js(channels))
	set("SM_HPS", js(hps))
	set("SM_HOSTS", js(j.hosts))
	set("SM_NUM_GPUS", "0")
	set("SM_NUM_CPUS", strconv.Itoa(runtime.NumCPU()))
	e.addList(j.env)
	if j.credsURI != "" {
		withCredentials(&e, j.credsURI)
	}
	return e.list()
}

// envBuilder layers container environments: a later value replaces an
// earlier one, and a variable keeps the position of its first appearance.
type envBuilder struct {
	vals  map[string]string
	order []string
}

func (e *envBuilder) set(k, v string) {
	if e.vals == nil {
		e.vals = map[string]string{}
	}
	if _, ok := e.vals[k]; !ok {
		e.order = append(e.order, k)
	}
	e.vals[k] = v
}

// del removes k.
func (e *envBuilder) del(k string) {
	if _, ok := e.vals[k]; !ok {
		return
	}
	delete(e.vals, k)
	e.order = slices.DeleteFunc(e.order, func(o string) bool { return o == k })
}

// addList adds KEY=value entries.
func (e *envBuilder) addList(kvs []string) {
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		e.set(k, v)
	}
}

// addMap adds a map in key order, so the result does not depend on Go's
// map iteration.
func (e *envBuilder) addMap(m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e.set(k, m[k])
	}
}

// list returns KEY=value entries, with a default PATH if none was set.
func (e *envBuilder) list() []string {
	if _, ok := e.vals["PATH"]; !ok {
		e.set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	out := make([]string, 0, len(e.order))
	for _, k := range e.order {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}

// imageUser reads a numeric image USER (uid or uid:gid; root and "" are 0).
func imageUser(u string) (uid, gid uint32, err error) { return imageUserIn("", u) }

// imageUserIn resolves an image USER as Docker does — name or uid,
// optionally :group or :gid — looking names up in the image's /etc/passwd
// and /etc/group under rootfs. The image's files are read through os.Root,
// so a link in the image cannot make convoy read the host's files. A uid
// without a group runs with gid = uid (a name: its primary group).
func imageUserIn(rootfs, u string) (uid, gid uint32, err error) {
	if u == "" || u == "root" || u == "0" {
		return 0, 0, nil
	}
	us, gs, hasGroup := strings.Cut(u, ":")
	if n, err := strconv.ParseUint(us, 10, 32); err == nil {
		uid, gid = uint32(n), uint32(n)
	} else {
		entry, ok, err := lookupIn(rootfs, "passwd", us)
		if err != nil || !ok {
			return 0, 0, fmt.Errorf("image USER %q: no user %s in the image's /etc/passwd%s", u, us, errSuffix(err))
		}
		uid, gid = entry[0], entry[1]
	}
	if hasGroup {
		if n, err := strconv.ParseUint(gs, 10, 32); err == nil {
			gid = uint32(n)
		} else {
			entry, ok, err := lookupIn(rootfs, "group", gs)
			if err != nil || !ok {
				return 0, 0, fmt.Errorf("image USER %q: no group %s in the image's /etc/group%s", u, gs, errSuffix(err))
			}
			gid = entry[0]
		}
	}
	return uid, gid, nil
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

// lookupIn finds name in the image's /etc/passwd (uid, gid) or /etc/group
// (gid) under rootfs.
func lookupIn(rootfs, file, name string) ([]uint32, bool, error) {
	if rootfs == "" {
		return nil, false, errors.New("no image root to look names up in")
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil, false, err
	}
	defer root.Close()
	// Non-blocking, and only a regular file: the image controls what
	// /etc/passwd is, and opening a FIFO for reading would wait for a
	// writer forever, hanging the job's start beyond any context.
	f, err := root.OpenFile(filepath.Join("etc", file), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, false, fmt.Errorf("/etc/%s of the image is not a regular file", file)
	}
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	for sc.Scan() {
		// passwd: name:x:uid:gid:…   group: name:x:gid:…
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 3 || fields[0] != name {
			continue
		}
		var ids []uint32
		for _, f := range fields[2:min(len(fields), map[string]int{"passwd": 4, "group": 3}[file])] {
			n, err := strconv.ParseUint(f, 10, 32)
			if err != nil {
				return nil, false, fmt.Errorf("bad /etc/%s line for %s", file, name)
			}
			ids = append(ids, uint32(n))
		}
		if (file == "passwd" && len(ids) == 2) || (file == "group" && len(ids) == 1) {
			return ids, true, nil
		}
		return nil, false, fmt.Errorf("bad /etc/%s line for %s", file, name)
	}
	return nil, false, sc.Err()
}

// parseS3URI splits s3://bucket/prefix.
func parseS3URI(uri string) (bucket, prefix string) {
	rest := strings.TrimPrefix(uri, "s3://")
	bucket, prefix, _ = strings.Cut(rest, "/")
	return bucket, prefix
}

// s3Error describes an S3 error as SageMaker's messages do: "AccessDenied
// (403): Access Denied".
func s3Error(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return fmt.Sprintf("%s: %s", ae.ErrorCode(), ae.ErrorMessage())
	}
	return err.Error()
}

// stage lists each channel's objects and downloads those of File and
// FastFile channels (FastFile is staged like File: convoy does not stream
// files on demand). A Pipe channel is not downloaded: its FIFOs are made,
// and streamPipes streams it while the job runs.
func (j *jobRun) stage(ctx context.Context) (Outcome, bool) {
	for _, c := range j.job.Request.InputDataConfig {
		objs, o, ok := j.channelObjects(ctx, c)
		if !ok {
			return o, false
		}
		if inputMode(j.job.Request.AlgorithmSpecification, c) == PipeMode {
			if err := j.addPipes(c, objs); err != nil {
				return failed("InternalServerError: Pipe mode input of channel %s: %v", c.ChannelName, err), false
			}
			j.log.Info("channel ready to stream", "channel", c.ChannelName, "objects", len(objs))
			continue
		}
		// One copy for all hosts, or each host its shard.
		hosts := 1
		if c.sharded() {
			hosts = len(j.hosts)
		}
		for i, h := range j.hosts[:hosts] {
			if o, ok := j.stageObjects(ctx, c, epochObjects(objs, c.seed(), 0, i, hosts), j.channelDir(c, h)); !ok {
				return o, false
			}
		}
		j.log.Info("channel staged", "channel", c.ChannelName, "objects", len(objs), "shards", hosts)
	}
	return Outcome{}, true
}

// stageObjects downloads objects into dir.
func (j *jobRun) stageObjects(ctx context.Context, c Channel, objs []stagedObject, dir string) (Outcome, bool) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return failed("InternalServerError: %v", err), false
	}
	defer root.Close()
	for _, obj := range objs {
		if err := j.download(ctx, root, obj.bucket, obj.key, obj.rel); err != nil {
			if ctx.Err() != nil {
				return j.stoppedBeforeTraining(ctx), false
			}
			return failed("ClientError: Data download failed: s3://%s/%s for channel %s with role %s: %s", obj.bucket, obj.key, c.ChannelName, j.job.Role.ARN, s3Error(err)), false
		}
	}
	return Outcome{}, true
}

// stagedObject is one object of a channel and its path under the channel.
type stagedObject struct{ bucket, key, rel string }

// maxManifest bounds a ManifestFile's size.
const maxManifest = 64 << 20

// channelObjects lists what a channel stages: every object under the
// S3Prefix, keeping its path below the prefix's last "/"; or, for a
// ManifestFile, the manifest's prefix joined with each relative key, staged
// at that relative path (SageMaker's manifest format:
// [{"prefix": "s3://bucket/p/"}, "rel/a", "rel/b", …]).
func (j *jobRun) channelObjects(ctx context.Context, c Channel) ([]stagedObject, Outcome, bool) {
	role := j.job.Role.ARN
	src := c.DataSource.S3DataSource
	uri := src.S3Uri
	bucket, prefix := parseS3URI(uri)
	fail := func(format string, args ...any) ([]stagedObject, Outcome, bool) {
		if ctx.Err() != nil {
			return nil, j.stoppedBeforeTraining(ctx), false
		}
		return nil, failed(format, args...), false
	}
	local := func(rel, key string) bool { return rel != "" && filepath.IsLocal(rel) && !strings.HasSuffix(key, "/") }
	var objs []stagedObject
	if src.S3DataType == "ManifestFile" {
		out, err := j.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &prefix})
		if err != nil {
			return fail("ClientError: Data download failed: manifest %s for channel %s with role %s: %s", uri, c.ChannelName, role, s3Error(err))
		}
		data, err := io.ReadAll(io.LimitReader(out.Body, maxManifest+1))
		out.Body.Close()
		if err != nil {
			return fail("ClientError: Data download failed: manifest %s: %v", uri, err)
		}
		var entries []json.RawMessage
		var head struct {
			Prefix string `json:"prefix"`
		}
		if len(data) > maxManifest || json.Unmarshal(data, &entries) != nil || len(entries) == 0 ||
			json.Unmarshal(entries[0], &head) != nil || !s3URIRE.MatchString(head.Prefix) {
			return fail(`ClientError: manifest %s for channel %s is not a SageMaker manifest: want a JSON array of at most 64 MiB starting with {"prefix": "s3://bucket/prefix/"} followed by relative keys`, uri, c.ChannelName)
		}
		mb, mp := parseS3URI(head.Prefix)
		for _, e := range entries[1:] {
			var rel string
			if json.Unmarshal(e, &rel) != nil || !local(rel, rel) {
				return fail("ClientError: manifest %s for channel %s: entry %s is not a relative key that can be a file name under /opt/ml/input/data/%s", uri, c.ChannelName, e, c.ChannelName)
			}
			objs = append(objs, stagedObject{bucket: mb, key: mp + rel, rel: rel})
		}
	} else {
		// Keys keep their path below the prefix's last "/".
		base := prefix[:strings.LastIndex(prefix, "/")+1]
		p := s3.NewListObjectsV2Paginator(j.s3, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return fail("ClientError: Data download failed: list %s for channel %s with role %s: %s", uri, c.ChannelName, role, s3Error(err))
			}
			for _, obj := range page.Contents {
				key := aws.ToString(obj.Key)
				if strings.HasSuffix(key, "/") {
					continue // a "folder" marker
				}
				rel := strings.TrimPrefix(key, base)
				if !local(rel, key) {
					return fail("ClientError: Data download failed: object key %q cannot be a file name under /opt/ml/input/data/%s", key, c.ChannelName)
				}
				objs = append(objs, stagedObject{bucket: bucket, key: key, rel: rel})
			}
		}
	}
	if len(objs) == 0 {
		return fail(`ClientError: No S3 objects found under S3 URL "%s" given in input data source. Please ensure that the bucket exists in the selected region (%s), that objects exist under that S3 prefix, and that the role "%s" has "s3:ListBucket" permissions on bucket "%s".`,
			uri, j.r.Region, role, bucket)
	}
	return objs, Outcome{}, true
}

func (j *jobRun) download(ctx context.Context, root *os.Root, bucket, key, rel string) error {
	obj, err := j.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return err
	}
	defer obj.Body.Close()
	if d := filepath.Dir(rel); d != "." {
		if err := root.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	f, err := root.OpenFile(rel, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, obj.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// wait waits for the hosts to exit, stopping them when the job runs out of
// time or ctx ends. stopped is "" (they exited), MaxRuntimeExceeded,
// Stopped (StopTrainingJob) or "shutdown" (convoy is stopping).
func (j *jobRun) wait(ctx context.Context, ex executor.Job) (results []executor.HostResult, stopped string) {
	type waited struct {
		res []executor.HostResult
		err error
	}
	done := make(chan waited, 1)
	go func() {
		res, err := ex.Wait(context.Background())
		done <- waited{res, err}
	}()
	limit := time.NewTimer(time.Duration(j.job.Request.StoppingCondition.MaxRuntimeInSeconds) * time.Second)
	defer limit.Stop()
	grace := j.r.StopGrace
	if grace <= 0 {
		grace = defaultStopGrace
	}
	select {
	case w := <-done:
		if errors.As(context.Cause(ctx), new(*jobFailure)) {
			return j.resultsOf(w.res, w.err), stoppedFailed // the hosts failed because of it
		}
		return j.resultsOf(w.res, w.err), ""
	case <-limit.C:
		stopped = "MaxRuntimeExceeded"
		j.report(Stopping, "Training job runtime exceeded MaxRuntimeInSeconds provided; stopping it")
	case <-ctx.Done():
		stopped = Stopped
		if errors.As(context.Cause(ctx), new(*jobFailure)) {
			stopped = stoppedFailed
		} else if !errors.Is(context.Cause(ctx), ErrStopRequested) {
			stopped, grace = "shutdown", min(grace, shutdownGrace)
		}
	}
	j.log.Info("stopping training job", "why", stopped, "grace", grace)
	ex.Signal(syscall.SIGTERM)
	select {
	case w := <-done:
		return j.resultsOf(w.res, w.err), stopped
	case <-time.After(grace):
	}
	ex.Signal(syscall.SIGKILL)
	w := <-done
	return j.resultsOf(w.res, w.err), stopped
}

func (j *jobRun) resultsOf(res []executor.HostResult, err error) []executor.HostResult {
	if err != nil {
		return []executor.HostResult{{Host: "algo-1", ExitCode: -1, Err: err}}
	}
	return res
}

// hostFailure tells whether a host failed and, if so, why: the first
// 1024 bytes of its /opt/ml/output/failure, as SageMaker reports them.
func (j *jobRun) hostFailure(res executor.HostResult) (Outcome, bool) {
	if res.Err == nil && res.ExitCode == 0 {
		return Outcome{}, false
	}
	if f, err := os.Open(filepath.Join(j.hostDir(res.Host), "output", "failure")); err == nil {
		b, _ := io.ReadAll(io.LimitReader(f, maxFailure))
		f.Close()
		if msg := strings.TrimSpace(string(b)); msg != "" {
			return failed("%s", msg), true
		}
	}
	logHint := fmt.Sprintf("see %s", filepath.Join(j.dir, "logs", res.Host+".log"))
	if res.Err != nil {
		return failed("AlgorithmError: %s could not run: %v (%s)", res.Host, res.Err, logHint), true
	}
	how := fmt.Sprintf("exit code %d", res.ExitCode)
	if res.Signal != "" {
		how += " (" + res.Signal + ")"
	}
	return failed("AlgorithmError: %s exited with %s (%s)", res.Host, how, logHint), true
}

// outputLocation is S3OutputPath/<job>/output.
func (j *jobRun) outputLocation() (bucket, prefix string) {
	bucket, prefix = parseS3URI(j.job.Request.OutputDataConfig.S3OutputPath)
	return bucket, path.Join(prefix, j.job.Name, "output")
}

// upload sends algo-1's /opt/ml/model as model.tar.gz, and its
// /opt/ml/output/data as output.tar.gz when it holds anything.
func (j *jobRun) upload(ctx context.Context) (string, error) {
	bucket, prefix := j.outputLocation()
	tmp := filepath.Join(j.work, "upload")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", err
	}
	host := j.hostDir(j.hosts[0])
	modelKey := prefix + "/model.tar.gz"
	if _, err := j.put(ctx, filepath.Join(host, "model"), filepath.Join(tmp, "model.tar.gz"), bucket, modelKey, true); err != nil {
		return "", err
	}
	if _, err := j.put(ctx, filepath.Join(host, "output", "data"), filepath.Join(tmp, "output.tar.gz"), bucket, prefix+"/output.tar.gz", false); err != nil {
		return "", err
	}
	return "s3://" + bucket + "/" + modelKey, nil
}

// put archives dir into file and uploads it; an empty dir is uploaded only
// when always is set.
func (j *jobRun) put(ctx context.Context, dir, file, bucket, key string, always bool) (bool, error) {
	n, err := tarGz(dir, file)
	if err != nil {
		return false, fmt.Errorf("archive %s: %w", filepath.Base(dir), err)
	}
	if n == 0 && !always {
		return false, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	in := &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: f, ContentType: aws.String("application/x-gzip")}
	if k := j.job.Request.OutputDataConfig.KmsKeyId; k != "" {
		in.ServerSideEncryption = s3types.ServerSideEncryptionAwsKms
		in.SSEKMSKeyId = &k
	}
	if _, err := j.s3.PutObject(ctx, in); err != nil {
		return false, fmt.Errorf("s3://%s/%s with role %s: %s", bucket, key, j.job.Role.ARN, s3Error(err))
	}
	return true, nil
}

// tarGz writes dir's tree as a gzip'd tar and returns how many entries it
// holds. The tree was written by the container: it is read through an
// os.Root, so no symbolic link leads outside it, and links are archived as
// links, never followed.
func tarGz(dir, file string) (int, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	out, err := os.OpenFile(file, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	gz := gzip.NewWriter(out)
	tw := tar.NewWriter(gz)
	n := 0
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			if link, err = root.Readlink(p); err != nil {
				return err
			}
		case info.IsDir(), info.Mode().IsRegular():
		default:
			return nil // devices, sockets and pipes are not model artifacts
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = p, 0, 0, "", ""
		// Owned by root in the archive, so no set-user-ID, set-group-ID
		// or sticky bit: a container must not be able to leave a setuid
		// root program in model.tar.gz for whoever unpacks it.
		hdr.Mode &^= 0o7000
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		n++
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := root.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.CopyN(tw, f, hdr.Size)
		return err
	})
	if err != nil {
		return 0, err
	}
	if err := tw.Close(); err != nil {
		return 0, err
	}
	if err := gz.Close(); err != nil {
		return 0, err
	}
	return n, out.Close()
}
