// Package iamtest gives the unit tests of convoy's services what they all
// start from: a fresh database, a master key and an IAM store on them, and
// the administrator's principal.
package iamtest

import (
	"context"
	"path/filepath"
	"testing"

	"convoy/internal/iam"
	"convoy/internal/sealbox"
	"convoy/internal/state"
)

// Open returns a new SQLite database in a temporary directory (closed when
// the test ends), a master key beside it, and an IAM store on both.
func Open(t testing.TB) (*state.DB, *sealbox.Box, *iam.Store) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := state.OpenSQLite(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	box, err := sealbox.LoadOrCreate(filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	store, err := iam.Open(ctx, db, box)
	if err != nil {
		t.Fatal(err)
	}
	return db, box, store
}

// Admin returns the principal of the administrator, creating its key.
func Admin(t testing.TB, store *iam.Store) *iam.Principal {
	t.Helper()
	ctx := context.Background()
	key, err := store.EnsureAdmin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := store.UserPrincipal(ctx, iam.AdminUser, key.ID)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
