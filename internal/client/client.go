// Package client lets convoy's own commands (convoy jobs) call a running
// convoy the way any AWS client does: over TLS, verified against the CA in
// convoy.env, with SigV4-signed requests under the admin keys written
// there.
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"convoy/internal/tlsconf"
)

// Env is what convoy up writes to DATA/convoy.env.
type Env map[string]string

// ReadEnv reads DATA/convoy.env; it exists only while convoy runs.
func ReadEnv(dataDir string) (Env, error) {
	path := filepath.Join(dataDir, "convoy.env")
	env, err := ParseEnvFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no convoy is running on %s (%s is missing): start it with `convoy up --data %s`", dataDir, path, dataDir)
	}
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"CONVOY_ENDPOINT", "AWS_CA_BUNDLE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} {
		if env[k] == "" {
			return nil, fmt.Errorf("%s lacks %s", path, k)
		}
	}
	return env, nil
}

// ParseEnvFile reads the export lines of a convoy.env file.
func ParseEnvFile(path string) (Env, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := Env{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "export ")
		if !ok {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		env[name] = unquote(value)
	}
	return env, sc.Err()
}

// unquote undoes the shell single quoting convoy up writes ('it'\”s').
func unquote(v string) string {
	if len(v) < 2 || v[0] != '\'' || v[len(v)-1] != '\'' {
		return v
	}
	return strings.ReplaceAll(v[1:len(v)-1], `'\''`, "'")
}

// Client calls convoy's AWS JSON APIs.
type Client struct {
	env    Env
	http   *http.Client
	signer *v4.Signer
}

// New returns a client for the convoy described by env.
func New(env Env) (*Client, error) {
	pem, err := os.ReadFile(env["AWS_CA_BUNDLE"])
	if err != nil {
		return nil, fmt.Errorf("convoy's CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no certificate", env["AWS_CA_BUNDLE"])
	}
	tr := &http.Transport{TLSClientConfig: tlsconf.Client(tlsconf.Compat, roots, ""), ForceAttemptHTTP2: true}
	return &Client{env: env, http: &http.Client{Transport: tr, Timeout: time.Minute}, signer: v4.NewSigner()}, nil
}

// APIError is an AWS JSON error answer.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %s (HTTP %d)", e.Code, e.Message, e.Status)
}

// CallJSON calls an awsJson1_1 operation: target is "SageMaker.ListTrainingJobs",
// service the signing name ("sagemaker").
func (c *Client) CallJSON(ctx context.Context, service, target string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.env["CONVOY_ENDPOINT"]+"/", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", target)
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: c.env["AWS_ACCESS_KEY_ID"], SecretAccessKey: c.env["AWS_SECRET_ACCESS_KEY"]}
	if err := c.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), service, c.env["AWS_DEFAULT_REGION"], time.Now()); err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		json.Unmarshal(data, &e)
		return &APIError{Status: resp.StatusCode, Code: e.Type, Message: e.Message}
	}
	return json.Unmarshal(data, out)
}
