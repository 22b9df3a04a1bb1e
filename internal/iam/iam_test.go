package iam

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"convoy/internal/awsproto"
	"convoy/internal/sealbox"
	"convoy/internal/state"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	ctx := context.Background()
	db, err := state.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	box, err := sealbox.LoadOrCreate(filepath.Join(t.TempDir(), "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, db, box)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func code(err error) string {
	var ae *awsproto.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

func TestAdminKeyIsStableAndSealed(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	k1, err := s.EnsureAdmin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := s.EnsureAdmin(ctx)
	if k1 != k2 {
		t.Fatal("EnsureAdmin made a second key")
	}
	var sealed []byte
	s.db.QueryRow(`SELECT secret_sealed FROM iam_access_keys WHERE access_key_id = ?`, k1.ID).Scan(&sealed)
	if len(sealed) == 0 || string(sealed) == k1.Secret || containsBytes(sealed, []byte(k1.Secret)) {
		t.Fatal("secret is stored in plaintext")
	}
	secret, user, err := s.LookupAccessKey(ctx, k1.ID)
	if err != nil || secret != k1.Secret || user != AdminUser {
		t.Fatalf("lookup: %q %q %v", secret, user, err)
	}
	p, _ := s.UserPrincipal(ctx, AdminUser, k1.ID)
	if err := s.Authorize(ctx, p, "iam:CreateUser", "*", nil); err != nil {
		t.Fatalf("admin denied: %v", err)
	}
}

func containsBytes(h, n []byte) bool {
	for i := 0; i+len(n) <= len(h); i++ {
		if string(h[i:i+len(n)]) == string(n) {
			return true
		}
	}
	return false
}

func TestAuthorizeAndPassRole(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	p := userWithKey(t, s, "dev")
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	role, err := s.CreateRole(ctx, Role{Name: "exec", Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	if code(s.Authorize(ctx, p, "sagemaker:CreateTrainingJob", "*", nil)) != "AccessDenied" {
		t.Fatal("user without policy allowed")
	}
	if _, err := s.AuthorizePassRole(ctx, p, role.ARN, "sagemaker.amazonaws.com"); code(err) != "AccessDenied" {
		t.Fatalf("PassRole without permission: %v", err)
	}
	pass := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iam:PassRole","Resource":"` + role.ARN + `","Condition":{"StringEquals":{"iam:PassedToService":"sagemaker.amazonaws.com"}}}]}`
	if err := s.PutInlinePolicy(ctx, KindUser, "dev", "pass", pass); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthorizePassRole(ctx, p, role.ARN, "sagemaker.amazonaws.com"); err != nil {
		t.Fatalf("PassRole with permission: %v", err)
	}
	if _, err := s.AuthorizePassRole(ctx, p, role.ARN, "ec2.amazonaws.com"); code(err) != "AccessDenied" {
		t.Fatalf("PassRole to another service: %v", err)
	}
	if _, err := s.AuthorizePassRole(ctx, p, s.ResourceARN("role", "missing"), "sagemaker.amazonaws.com"); code(err) != "AccessDenied" {
		t.Fatalf("PassRole of a role the user may not pass: %v", err)
	}
	// Deny wins over the AdministratorAccess allow.
	if err := s.Attach(ctx, KindUser, "dev", AdministratorAccess); err != nil {
		t.Fatal(err)
	}
	deny := `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"iam:PassRole","Resource":"*"}]}`
	s.PutInlinePolicy(ctx, KindUser, "dev", "deny", deny)
	if _, err := s.AuthorizePassRole(ctx, p, role.ARN, "sagemaker.amazonaws.com"); code(err) != "AccessDenied" {
		t.Fatalf("explicit deny ignored: %v", err)
	}
	// Policy changes apply at once (the cache follows writes).
	s.DeleteInlinePolicy(ctx, KindUser, "dev", "deny")
	if _, err := s.AuthorizePassRole(ctx, p, role.ARN, "sagemaker.amazonaws.com"); err != nil {
		t.Fatalf("after removing the deny: %v", err)
	}
	// An inactive key is unknown.
	s.UpdateAccessKey(ctx, "dev", p.AccessKeyID, "Inactive")
	if _, _, err := s.LookupAccessKey(ctx, p.AccessKeyID); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("inactive key: %v", err)
	}
}

func TestValidation(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	for _, tc := range []struct {
		err  error
		code string
	}{
		{func() error { _, err := s.CreateUser(ctx, "bad name", ""); return err }(), "ValidationError"},
		{func() error { _, err := s.CreateUser(ctx, "ok", "no-slash"); return err }(), "ValidationError"},
		{func() error { _, err := s.CreateRole(ctx, Role{Name: "r", Trust: `{"Statement":[]}`}); return err }(), "MalformedPolicyDocument"},
		{s.PutInlinePolicy(ctx, KindUser, "nobody", "p", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`), "NoSuchEntity"},
		{s.DeleteUser(ctx, AdminUser), "DeleteConflict"},
	} {
		if code(tc.err) != tc.code {
			t.Errorf("got %v, want %s", tc.err, tc.code)
		}
	}
	if _, err := s.CreateUser(ctx, "twice", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUser(ctx, "twice", ""); code(err) != "EntityAlreadyExists" {
		t.Fatalf("duplicate user: %v", err)
	}
}

// userWithKey creates user name with an access key and returns its
// principal.
func userWithKey(t *testing.T, s *Store, name string) *Principal {
	t.Helper()
	ctx := context.Background()
	if _, err := s.CreateUser(ctx, name, ""); err != nil {
		t.Fatal(err)
	}
	key, _, err := s.CreateAccessKey(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.UserPrincipal(ctx, name, key.ID)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
