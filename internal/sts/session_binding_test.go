package sts

import (
	"context"
	"encoding/xml"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"convoy/internal/iam"
	"convoy/internal/iam/iamtest"
)

func sessionSetup(t *testing.T) (*Service, *iam.Store) {
	t.Helper()
	_, box, store := iamtest.Open(t)
	return New(store, box, slog.New(slog.NewTextHandler(io.Discard, nil))), store
}

type sessionCreds struct {
	AccessKeyId, SecretAccessKey, SessionToken string
}

func sessionCall(t *testing.T, s *Service, p *iam.Principal, form url.Values) sessionCreds {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r = r.WithContext(iam.WithPrincipal(r.Context(), p))
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("%s: %d %s", form.Get("Action"), w.Code, w.Body)
	}
	var out struct {
		Result struct {
			Credentials sessionCreds
		} `xml:",any"`
	}
	if err := xml.Unmarshal(w.Body.Bytes(), &out); err != nil || out.Result.Credentials.SessionToken == "" {
		t.Fatalf("response %s: %v", w.Body, err)
	}
	return out.Result.Credentials
}

// A session of a role must end with the role: on AWS a session is bound to
// the role's unique ID (AROA…), so deleting the role and creating another of
// the same name does not hand the new role's permissions to old sessions.
// Policies are looked up by name, so Lookup compares the token's unique ID
// with the role's current one.
func TestRoleSessionEndsWithItsRole(t *testing.T) {
	s, store := sessionSetup(t)
	ctx := context.Background()
	if _, err := store.CreateUser(ctx, "dev", ""); err != nil {
		t.Fatal(err)
	}
	key, _, _ := store.CreateAccessKey(ctx, "dev")
	dev, _ := store.UserPrincipal(ctx, "dev", key.ID)
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"` + dev.ARN + `"},"Action":"sts:AssumeRole"}]}`
	old, err := store.CreateRole(ctx, iam.Role{Name: "ops", Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	creds := sessionCall(t, s, dev, url.Values{"Action": {"AssumeRole"}, "RoleArn": {old.ARN}, "RoleSessionName": {"s1"}})
	if _, _, err := s.Lookup(ctx, creds.AccessKeyId, creds.SessionToken); err != nil {
		t.Fatalf("the fresh role session: %v", err)
	}

	// The administrator retires the role, and later creates an unrelated
	// privileged role that happens to reuse the name, trusting only itself.
	if err := store.DeleteRole(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	adminTrust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"` + store.UserARN(iam.AdminUser) + `"},"Action":"sts:AssumeRole"}]}`
	if _, err := store.CreateRole(ctx, iam.Role{Name: "ops", Trust: adminTrust}); err != nil {
		t.Fatal(err)
	}
	if err := store.Attach(ctx, iam.KindRole, "ops", iam.AdministratorAccess); err != nil {
		t.Fatal(err)
	}

	if _, p, err := s.Lookup(ctx, creds.AccessKeyId, creds.SessionToken); err != ErrInvalidToken {
		t.Fatalf("a session of the deleted role %s (id %s) still authenticates (as %v, err %v) after a new role took its name", old.ARN, old.ID, p, err)
	}
}

// Likewise for a user's GetSessionToken session: deleting the user and
// creating another one of the same name must not revive the old session
// as the new user.
func TestUserSessionEndsWithItsUser(t *testing.T) {
	s, store := sessionSetup(t)
	ctx := context.Background()
	old, err := store.CreateUser(ctx, "bob", "")
	if err != nil {
		t.Fatal(err)
	}
	key, _, _ := store.CreateAccessKey(ctx, "bob")
	bob, _ := store.UserPrincipal(ctx, "bob", key.ID)
	creds := sessionCall(t, s, bob, url.Values{"Action": {"GetSessionToken"}})
	if _, _, err := s.Lookup(ctx, creds.AccessKeyId, creds.SessionToken); err != nil {
		t.Fatalf("the fresh user session: %v", err)
	}

	store.DeleteAccessKey(ctx, "bob", key.ID)
	if err := store.DeleteUser(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreateUser(ctx, "bob", ""); err != nil {
		t.Fatal(err)
	}
	if err := store.Attach(ctx, iam.KindUser, "bob", iam.AdministratorAccess); err != nil {
		t.Fatal(err)
	}
	if _, p, err := s.Lookup(ctx, creds.AccessKeyId, creds.SessionToken); err != ErrInvalidToken {
		t.Fatalf("a session of the deleted user %s (id %s) still authenticates (as %v, err %v) after a new user took its name", old.ARN, old.ID, p, err)
	}
}
