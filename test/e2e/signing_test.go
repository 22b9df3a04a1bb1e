package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// signedS3 builds an S3 request signed with the admin key by the AWS SDK's
// own signer, for requests no SDK would send.
func signedS3(t *testing.T, c *harness.Convoy, method, path string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, c.Endpoint+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	ph := hex.EncodeToString(sum[:])
	req.Header.Set("X-Amz-Content-Sha256", ph)
	cfg := c.AWSConfig(t)
	creds, _ := cfg.Credentials.Retrieve(context.Background())
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, ph, "s3", cfg.Region, time.Now()); err != nil {
		t.Fatal(err)
	}
	return req
}

// signedRequest sends a signed S3 request and returns its status and body.
func signedRequest(t *testing.T, c *harness.Convoy, method, path string, body []byte, _ map[string]string) (int, string) {
	t.Helper()
	resp, err := c.HTTPClient(t, tlsconf.Modern).Do(signedS3(t, c, method, path, body))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(text)
}

// truncatedPut sends a correctly signed PUT that announces length bytes but
// delivers only body, then closes its side.
func truncatedPut(t *testing.T, c *harness.Convoy, path string, body []byte, length int) {
	t.Helper()
	req, err := http.NewRequest("PUT", c.Endpoint+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(length) // signed as announced
	req.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
	cfg := c.AWSConfig(t)
	creds, _ := cfg.Credentials.Retrieve(context.Background())
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, "UNSIGNED-PAYLOAD", "s3", cfg.Region, time.Now()); err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", c.Addr, func() *tls.Config {
		cfg := tlsconf.Client(tlsconf.Modern, c.CAPool(t), "127.0.0.1")
		cfg.NextProtos = []string{"http/1.1"}
		return cfg
	}())
	if err != nil {
		t.Fatal(err)
	}
	var head bytes.Buffer
	head.WriteString(req.Method + " " + req.URL.RequestURI() + " HTTP/1.1\r\nHost: " + req.Host + "\r\n")
	req.Header.Write(&head)
	head.WriteString("Content-Length: " + strconv.Itoa(length) + "\r\n\r\n")
	conn.Write(head.Bytes())
	conn.Write(body)
	conn.CloseWrite()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.ReadAll(conn)
	conn.Close()
}
