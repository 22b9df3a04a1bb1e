package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/sealbox"
	"convoy/internal/state"
)

const testRegion = "us-east-1"

// env is a KMS service on a fresh database with an IAM store.
type env struct {
	t     testing.TB
	ctx   context.Context
	db    *state.DB
	box   *sealbox.Box
	iam   *iam.Store
	kms   *Service
	admin *iam.Principal
	clock time.Time
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx := t.Context()
	db, err := state.OpenSQLite(ctx, filepath.Join(t.TempDir(), "convoy.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	master := make([]byte, 32)
	rand.Read(master)
	box, err := sealbox.New(master)
	if err != nil {
		t.Fatal(err)
	}
	store, err := iam.Open(ctx, db, box)
	if err != nil {
		t.Fatal(err)
	}
	key, err := store.EnsureAdmin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := store.UserPrincipal(ctx, iam.AdminUser, key.ID)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, db: db, box: box, iam: store, admin: admin, clock: time.Now().UTC()}
	e.kms = e.open()
	return e
}

// open opens (again) the KMS service on e's database, with e's clock and
// without the sweeper (tests call its parts).
func (e *env) open() *Service {
	e.t.Helper()
	s, err := open(e.ctx, e.db, e.box, e.iam, testRegion, slog.New(slog.DiscardHandler))
	if err != nil {
		e.t.Fatal(err)
	}
	s.now = func() time.Time { return e.clock }
	return s
}

// user creates an IAM user with the given inline policies and returns its
// principal.
func (e *env) user(name string, policies ...string) *iam.Principal {
	e.t.Helper()
	if _, err := e.iam.CreateUser(e.ctx, name, "/"); err != nil {
		e.t.Fatal(err)
	}
	for i, doc := range policies {
		if err := e.iam.PutInlinePolicy(e.ctx, iam.KindUser, name, "p"+string(rune('0'+i)), doc); err != nil {
			e.t.Fatal(err)
		}
	}
	p, err := e.iam.UserPrincipal(e.ctx, name, "AKIATEST")
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// call runs one KMS operation through ServeHTTP, as the server would.
func (e *env) call(p *iam.Principal, op string, in any) (map[string]any, *awsproto.Error) {
	e.t.Helper()
	var body []byte
	switch v := in.(type) {
	case string:
		body = []byte(v)
	case []byte:
		body = v
	default:
		var err error
		if body, err = json.Marshal(in); err != nil {
			e.t.Fatal(err)
		}
	}
	r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	r.Header.Set("X-Amz-Target", "TrentService."+op)
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	ctx, _ := awsproto.WithRequestID(r.Context())
	r = r.WithContext(iam.WithPrincipal(ctx, p))
	w := httptest.NewRecorder()
	e.kms.ServeHTTP(w, r)
	resp, _ := io.ReadAll(w.Result().Body)
	if ct := w.Header().Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		e.t.Fatalf("%s: Content-Type %q", op, ct)
	}
	var out map[string]any
	if err := json.Unmarshal(resp, &out); err != nil {
		e.t.Fatalf("%s: response is not a JSON object: %v\n%s", op, err, resp)
	}
	if w.Code != http.StatusOK {
		code, _ := out["__type"].(string)
		msg, _ := out["message"].(string)
		if code == "" || w.Header().Get("x-amzn-ErrorType") != code {
			e.t.Fatalf("%s: error %d without a proper __type: %s", op, w.Code, resp)
		}
		return out, &awsproto.Error{Code: code, Message: msg, Status: w.Code}
	}
	return out, nil
}

// must runs an operation that has to succeed.
func (e *env) must(p *iam.Principal, op string, in any) map[string]any {
	e.t.Helper()
	out, err := e.call(p, op, in)
	if err != nil {
		e.t.Fatalf("%s: %v", op, err)
	}
	return out
}

// fails runs an operation that has to fail with code.
func (e *env) fails(p *iam.Principal, code, op string, in any) *awsproto.Error {
	e.t.Helper()
	_, err := e.call(p, op, in)
	if err == nil || err.Code != code {
		e.t.Fatalf("%s: want %s, got %v", op, code, err)
	}
	return err
}

// createKey makes a key as the admin and returns its ID.
func (e *env) createKey(in map[string]any) string {
	e.t.Helper()
	if in == nil {
		in = map[string]any{}
	}
	out := e.must(e.admin, "CreateKey", in)
	return out["KeyMetadata"].(map[string]any)["KeyId"].(string)
}

func (e *env) encrypt(p *iam.Principal, keyRef string, plaintext []byte, encCtx map[string]string) []byte {
	e.t.Helper()
	out := e.must(p, "Encrypt", map[string]any{"KeyId": keyRef, "Plaintext": plaintext, "EncryptionContext": encCtx})
	return b64(e.t, out["CiphertextBlob"])
}

func b64(t testing.TB, v any) []byte {
	t.Helper()
	s, _ := v.(string)
	var b []byte
	if err := json.Unmarshal([]byte(`"`+s+`"`), &b); err != nil || s == "" {
		t.Fatalf("not a base64 blob: %v (%v)", v, err)
	}
	return b
}

// code is the AWS error code of err ("" for none; err may be a nil
// *awsproto.Error).
func code(err error) string {
	if ae, ok := err.(*awsproto.Error); ok && ae == nil {
		return ""
	}
	var ae *awsproto.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	if err != nil {
		return "non-AWS error: " + err.Error()
	}
	return ""
}
