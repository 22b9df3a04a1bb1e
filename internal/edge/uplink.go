package edge

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/internal/client"
	"convoy/internal/tlsconf"
)

// Cloud is how the uplink reaches a convoy cloud: what `convoy up` writes
// to convoy.env.
type Cloud struct {
	Endpoint  string // https URL
	CABundle  string // PEM file the endpoint's certificate must chain to
	Region    string
	AccessKey string
	SecretKey string
	Token     string
}

// LoadCloudEnv reads a convoy.env file.
func LoadCloudEnv(path string) (Cloud, error) {
	env, err := client.ParseEnvFile(path)
	if err != nil {
		return Cloud{}, fmt.Errorf("read cloud environment: %w (copy the convoy.env that `convoy up` writes)", err)
	}
	c := Cloud{Endpoint: env["CONVOY_ENDPOINT"], CABundle: env["AWS_CA_BUNDLE"], Region: env["AWS_DEFAULT_REGION"],
		AccessKey: env["AWS_ACCESS_KEY_ID"], SecretKey: env["AWS_SECRET_ACCESS_KEY"], Token: env["AWS_SESSION_TOKEN"]}
	for k, v := range map[string]string{"CONVOY_ENDPOINT": c.Endpoint, "AWS_CA_BUNDLE": c.CABundle,
		"AWS_ACCESS_KEY_ID": c.AccessKey, "AWS_SECRET_ACCESS_KEY": c.SecretKey} {
		if v == "" {
			return Cloud{}, fmt.Errorf("%s lacks %s", path, k)
		}
	}
	if !strings.HasPrefix(c.Endpoint, "https://") {
		return Cloud{}, fmt.Errorf("%s: CONVOY_ENDPOINT %q is not https: the uplink never sends in clear", path, c.Endpoint)
	}
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	return c, nil
}

// newS3 returns an S3 client for the cloud: TLS from tlsconf, verified
// against the cloud's CA bundle only (not the system roots), SigV4 with
// the cloud's keys, no SDK retries (the exporter retries with its own
// backoff, forever).
func newS3(c Cloud, p tlsconf.Profile) (*s3.Client, error) {
	pemBytes, err := os.ReadFile(c.CABundle)
	if err != nil {
		return nil, fmt.Errorf("cloud CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("%s holds no certificate", c.CABundle)
	}
	tr := &http.Transport{TLSClientConfig: tlsconf.Client(p, roots, ""), ForceAttemptHTTP2: true}
	cfg := aws.Config{
		Region:       c.Region,
		Credentials:  credentials.NewStaticCredentialsProvider(c.AccessKey, c.SecretKey, c.Token),
		HTTPClient:   &http.Client{Transport: tr, Timeout: time.Minute},
		BaseEndpoint: aws.String(c.Endpoint),
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.UsePathStyle = true
		o.RetryMaxAttempts = 1
	}), nil
}

// Exporter uploads the queue to s3://Bucket/<Prefix><Core>/<first>-<last>.jsonl.
type Exporter struct {
	Queue      *Queue
	S3         *s3.Client
	Bucket     string
	Prefix     string
	Core       string
	MaxBatch   int
	MaxBytes   int64
	BackoffMin time.Duration
	BackoffMax time.Duration
	Log        *slog.Logger
	// Wake is signalled (non-blocking) when a message was queued.
	Wake chan struct{}

	metrics  *metrics
	exported atomic.Int64
}

// Exported is the number of messages uploaded since start.
func (e *Exporter) Exported() int64 { return e.exported.Load() }

// line is one message in an uploaded object.
type line struct {
	Seq      int64     `json:"seq"`
	Topic    string    `json:"topic"`
	Device   string    `json:"device"`
	Received time.Time `json:"received"`
	Payload  []byte    `json:"payload"` // base64
}

// ObjectKey names the object of the batch first..last.
func ObjectKey(prefix, core string, first, last int64) string {
	return fmt.Sprintf("%s%s/%020d-%020d.jsonl", prefix, core, first, last)
}

// Run uploads until ctx ends.
func (e *Exporter) Run(ctx context.Context) {
	backoff := e.BackoffMin
	for ctx.Err() == nil {
		batch, err := e.Queue.Next(ctx, e.MaxBatch, e.MaxBytes)
		if err == nil && len(batch) == 0 {
			select {
			case <-ctx.Done():
			case <-e.Wake:
			case <-time.After(5 * time.Second):
			}
			continue
		}
		if err == nil {
			err = e.upload(ctx, batch)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			e.metrics.exportFailed()
			count, size := e.Queue.Depth()
			e.Log.Warn("uplink: upload failed; retrying", "err", err, "retry_in", backoff, "queued_messages", count, "queued_bytes", size)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, e.BackoffMax)
			continue
		}
		backoff = e.BackoffMin
	}
}

func (e *Exporter) upload(ctx context.Context, batch []Message) error {
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	for _, m := range batch {
		if err := enc.Encode(line{Seq: m.Seq, Topic: m.Topic, Device: m.Device, Received: m.Received, Payload: m.Payload}); err != nil {
			return err
		}
	}
	first, last := batch[0].Seq, batch[len(batch)-1].Seq
	key := ObjectKey(e.Prefix, e.Core, first, last)
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err := e.S3.PutObject(cctx, &s3.PutObjectInput{
		Bucket:      aws.String(e.Bucket),
		Key:         aws.String(key),
		Body:        bytes.NewReader(body.Bytes()),
		ContentType: aws.String("application/x-ndjson"),
	})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", e.Bucket, key, err)
	}
	// PutObject returns no error only on a 2xx answer: the object is stored.
	if err := e.Queue.Ack(ctx, first, last); err != nil {
		return err
	}
	e.exported.Add(int64(len(batch)))
	e.metrics.batchExported(len(batch))
	e.Log.Info("uplink: batch exported", "object", "s3://"+e.Bucket+"/"+key, "messages", len(batch), "bytes", body.Len())
	return nil
}
