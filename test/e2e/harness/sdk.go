package harness

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/internal/tlsconf"
)

// AWSConfig returns an AWS SDK for Go v2 configuration for convoy: its
// endpoint, its CA, the admin credentials (or the given ones).
func (c *Convoy) AWSConfig(t testing.TB, creds ...string) aws.Config {
	t.Helper()
	akid, secret, token := c.Env["AWS_ACCESS_KEY_ID"], c.Env["AWS_SECRET_ACCESS_KEY"], ""
	if len(creds) >= 2 {
		akid, secret = creds[0], creds[1]
	}
	if len(creds) == 3 {
		token = creds[2]
	}
	tr := &http.Transport{TLSClientConfig: tlsconf.Client(tlsconf.Modern, c.CAPool(t), "127.0.0.1"),
		ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return aws.Config{
		Region:       c.Env["AWS_DEFAULT_REGION"],
		Credentials:  credentials.NewStaticCredentialsProvider(akid, secret, token),
		HTTPClient:   &http.Client{Transport: tr, Timeout: 5 * time.Minute},
		BaseEndpoint: aws.String(c.Endpoint),
	}
}

// S3 returns an S3 client for convoy (path-style addressing).
func (c *Convoy) S3(t testing.TB, creds ...string) *s3.Client {
	return s3.NewFromConfig(c.AWSConfig(t, creds...), func(o *s3.Options) {
		o.UsePathStyle = true
		o.RetryMaxAttempts = 1
	})
}

// Context returns a context that ends with the test.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}
