package objectstore

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"convoy/internal/iam"
	"convoy/internal/iam/iamtest"
)

type authzEnv struct {
	s     *Store
	iam   *iam.Store
	admin *iam.Principal
}

func authzOpen(t *testing.T) *authzEnv {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, box, store := iamtest.Open(t)
	s, err := Open(ctx, Config{Dir: filepath.Join(dir, "objects"), DB: db, Box: box, IAM: store, Region: "us-east-1",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	k, err := store.EnsureAdmin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := store.UserPrincipal(ctx, iam.AdminUser, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	return &authzEnv{s: s, iam: store, admin: admin}
}

func (e *authzEnv) do(p *iam.Principal, method, target, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	r = r.WithContext(iam.WithPrincipal(r.Context(), p))
	w := httptest.NewRecorder()
	e.s.ServeHTTP(w, r)
	return w
}

func (e *authzEnv) must(t *testing.T, p *iam.Principal, method, target, body string) {
	t.Helper()
	if w := e.do(p, method, target, body); w.Code/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, target, w.Code, w.Body)
	}
}

func (e *authzEnv) user(t *testing.T, name string) *iam.Principal {
	t.Helper()
	ctx := context.Background()
	if _, err := e.iam.CreateUser(ctx, name, ""); err != nil {
		t.Fatal(err)
	}
	k, _, err := e.iam.CreateAccessKey(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.iam.UserPrincipal(ctx, name, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A bucket policy whose Principal is the account (arn:aws:iam::ACCT:root or
// the bare account ID) grants to the account, which must then delegate to
// its users and roles through their identity policies: on AWS a user
// without any identity policy gets nothing from it, while one whose
// identity policy allows the action is let in.
func TestBucketPolicyAccountPrincipalNeedsIdentityAllow(t *testing.T) {
	e := authzOpen(t)
	e.must(t, e.admin, http.MethodPut, "/data", "")
	e.must(t, e.admin, http.MethodPut, "/data/secret.txt", "top secret")
	acct := e.iam.AccountID()
	pol := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + acct + `:root"},"Action":"s3:*","Resource":["arn:aws:s3:::data","arn:aws:s3:::data/*"]}]}`
	e.must(t, e.admin, http.MethodPut, "/data?policy", pol)

	nobody := e.user(t, "nobody") // no identity policy at all
	if w := e.do(nobody, http.MethodGet, "/data/secret.txt", ""); w.Code == http.StatusOK {
		t.Fatalf("a user with no identity policy read an object through a bucket policy that only names the account: %q", w.Body)
	}
	if w := e.do(nobody, http.MethodDelete, "/data/secret.txt", ""); w.Code/100 == 2 {
		t.Fatalf("a user with no identity policy deleted an object through a bucket policy that only names the account: %d", w.Code)
	}
	reader := e.user(t, "reader")
	if err := e.iam.PutInlinePolicy(context.Background(), iam.KindUser, "reader", "read",
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/*"}]}`); err != nil {
		t.Fatal(err)
	}
	if w := e.do(reader, http.MethodGet, "/data/secret.txt", ""); w.Code != http.StatusOK {
		t.Errorf("a user whose identity policy allows the read: %d %s", w.Code, w.Body)
	}
}

// A session policy limits what a role session gets from a resource policy
// that names the role (not the session): AWS's evaluation applies session
// policies to identity-based policies and to resource-based policies whose
// principal is the role ARN. A bucket policy naming the session itself is
// outside the session policy, and a session without one reads through the
// policy naming its role.
func TestSessionPolicyLimitsBucketPolicyNamingRole(t *testing.T) {
	e := authzOpen(t)
	ctx := context.Background()
	e.must(t, e.admin, http.MethodPut, "/data", "")
	e.must(t, e.admin, http.MethodPut, "/data/secret.txt", "top secret")
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"` + e.admin.ARN + `"},"Action":"sts:AssumeRole"}]}`
	role, err := e.iam.CreateRole(ctx, iam.Role{Name: "reader", Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	pol := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"` + role.ARN + `"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::data/*"}]}`
	e.must(t, e.admin, http.MethodPut, "/data?policy", pol)

	acct := e.iam.AccountID()
	session := &iam.Principal{ARN: "arn:aws:sts::" + acct + ":assumed-role/reader/s", AccountID: acct, UserID: role.ID + ":s",
		Kind: iam.KindAssumedRole, Name: "reader", SessionName: "s", RoleARN: role.ARN, Temporary: true,
		SessionPolicy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:GetCallerIdentity","Resource":"*"}]}`}
	if w := e.do(session, http.MethodGet, "/data/secret.txt", ""); w.Code == http.StatusOK {
		t.Fatalf("a session whose session policy allows no S3 action read an object via a bucket policy naming its role: %q", w.Body)
	}
	plain := *session
	plain.SessionPolicy = ""
	if w := e.do(&plain, http.MethodGet, "/data/secret.txt", ""); w.Code != http.StatusOK {
		t.Errorf("a session without a session policy, via a bucket policy naming its role: %d %s", w.Code, w.Body)
	}
	named := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"` + session.ARN + `"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::data/*"}]}`
	e.must(t, e.admin, http.MethodPut, "/data?policy", named)
	if w := e.do(session, http.MethodGet, "/data/secret.txt", ""); w.Code != http.StatusOK {
		t.Errorf("a session named by the bucket policy itself: %d %s", w.Code, w.Body)
	}
}

// CopyObject authorizes s3:GetObject on the source with the source bucket's
// policy, not the destination's (regression).
func TestCopyObjectSourceNeedsRead(t *testing.T) {
	e := authzOpen(t)
	ctx := context.Background()
	e.must(t, e.admin, http.MethodPut, "/private", "")
	e.must(t, e.admin, http.MethodPut, "/private/k", "secret")
	e.must(t, e.admin, http.MethodPut, "/mine", "")
	dev := e.user(t, "dev")
	pol := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":["arn:aws:s3:::mine","arn:aws:s3:::mine/*"]}]}`
	if err := e.iam.PutInlinePolicy(ctx, iam.KindUser, "dev", "mine", pol); err != nil {
		t.Fatal(err)
	}
	// The destination bucket's policy allows everything to everyone.
	open := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"}]}`
	e.must(t, e.admin, http.MethodPut, "/mine?policy", open)
	for _, src := range []string{"/private/k", "private/k", "%2Fprivate%2Fk", "/private/k?versionId=x"} {
		r := httptest.NewRequest(http.MethodPut, "/mine/copy", nil)
		r.Header.Set("X-Amz-Copy-Source", src)
		r = r.WithContext(iam.WithPrincipal(r.Context(), dev))
		w := httptest.NewRecorder()
		e.s.ServeHTTP(w, r)
		if w.Code != http.StatusForbidden {
			t.Errorf("copy from %q: %d %s", src, w.Code, w.Body)
		}
	}
}
