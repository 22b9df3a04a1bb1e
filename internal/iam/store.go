// Package iam holds convoy's account, its users and their access keys. Secret
// access keys are sealed (sealbox) before they reach the database.
package iam

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"sync/atomic"
	"time"

	"convoy/internal/sealbox"
	"convoy/internal/state"
)

var migrations = []string{
	`CREATE TABLE iam_account (
		account_id TEXT PRIMARY KEY,
		created    TEXT NOT NULL
	);
	CREATE TABLE iam_users (
		name     TEXT PRIMARY KEY,
		user_id  TEXT NOT NULL UNIQUE,
		path     TEXT NOT NULL DEFAULT '/',
		created  TEXT NOT NULL
	);
	CREATE TABLE iam_access_keys (
		access_key_id TEXT PRIMARY KEY,
		user_name     TEXT NOT NULL REFERENCES iam_users(name) ON DELETE CASCADE,
		secret_sealed BLOB NOT NULL,
		status        TEXT NOT NULL DEFAULT 'Active',
		created       TEXT NOT NULL
	);`,
	`CREATE TABLE iam_roles (
		name         TEXT PRIMARY KEY,
		role_id      TEXT NOT NULL UNIQUE,
		path         TEXT NOT NULL DEFAULT '/',
		trust_policy TEXT NOT NULL,
		description  TEXT NOT NULL DEFAULT '',
		max_session  INTEGER NOT NULL DEFAULT 3600,
		created      TEXT NOT NULL
	);
	CREATE TABLE iam_policies (
		arn         TEXT PRIMARY KEY,
		name        TEXT NOT NULL,
		policy_id   TEXT NOT NULL UNIQUE,
		path        TEXT NOT NULL DEFAULT '/',
		document    TEXT NOT NULL,
		description TEXT NOT NULL DEFAULT '',
		created     TEXT NOT NULL,
		updated     TEXT NOT NULL
	);
	-- kind is 'user' or 'role'; owner is the user or role name.
	CREATE TABLE iam_inline_policies (
		kind     TEXT NOT NULL,
		owner    TEXT NOT NULL,
		name     TEXT NOT NULL,
		document TEXT NOT NULL,
		PRIMARY KEY (kind, owner, name)
	);
	CREATE TABLE iam_attachments (
		kind       TEXT NOT NULL,
		owner      TEXT NOT NULL,
		policy_arn TEXT NOT NULL,
		PRIMARY KEY (kind, owner, policy_arn)
	);
	INSERT INTO iam_attachments (kind, owner, policy_arn)
		SELECT 'user', 'admin', 'arn:aws:iam::aws:policy/AdministratorAccess' FROM iam_users WHERE name = 'admin';`,
}

// AdminUser is the user created on first start, whose key convoy.env holds.
const AdminUser = "admin"

// Store is the IAM data of one convoy installation (one account).
type Store struct {
	db        *state.DB
	box       *sealbox.Box
	accountID string
	// gen counts IAM writes; caches keyed by it are dropped on any change.
	gen   atomic.Int64
	cache caches
}

// Open migrates the IAM tables and creates the account on first use.
func Open(ctx context.Context, db *state.DB, box *sealbox.Box) (*Store, error) {
	if err := db.Migrate(ctx, "iam", migrations); err != nil {
		return nil, err
	}
	s := &Store{db: db, box: box, cache: caches{keys: map[string]keyEntry{}, docs: map[string]docsEntry{}, users: map[string]genEntry[User]{}, roles: map[string]genEntry[Role]{}}}
	err := db.Tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT account_id FROM iam_account`).Scan(&s.accountID)
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		s.accountID = newAccountID()
		_, err = tx.ExecContext(ctx, `INSERT INTO iam_account (account_id, created) VALUES (?, ?)`, s.accountID, now())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open account: %w", err)
	}
	return s, nil
}

// AccountID is the 12-digit account ID used in every ARN.
func (s *Store) AccountID() string { return s.accountID }

// UserARN returns the ARN of a user.
func (s *Store) UserARN(name string) string {
	return fmt.Sprintf("arn:aws:iam::%s:user/%s", s.accountID, name)
}

// AccessKey is an access key ID and its secret.
type AccessKey struct {
	ID     string
	Secret string
	User   string
}

// EnsureAdmin returns the admin user's access key, creating the user and key
// on first start. Creation is one transaction: a crash leaves no half user.
func (s *Store) EnsureAdmin(ctx context.Context) (AccessKey, error) {
	var key AccessKey
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var sealed []byte
		err := tx.QueryRowContext(ctx, `SELECT access_key_id, secret_sealed FROM iam_access_keys
			WHERE user_name = ? AND status = 'Active' ORDER BY created LIMIT 1`, AdminUser).Scan(&key.ID, &sealed)
		if err == nil {
			secret, err := s.box.Open(sealed, []byte(key.ID))
			key.Secret, key.User = string(secret), AdminUser
			return err
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO iam_users (name, user_id, created) VALUES (?, ?, ?)`,
			AdminUser, newID("AIDA"), now()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO iam_attachments (kind, owner, policy_arn) VALUES ('user', ?, ?)`,
			AdminUser, AdministratorAccess); err != nil {
			return err
		}
		key = AccessKey{ID: newID("AKIA"), Secret: newSecret(), User: AdminUser}
		_, err = tx.ExecContext(ctx, `INSERT INTO iam_access_keys (access_key_id, user_name, secret_sealed, created) VALUES (?, ?, ?, ?)`,
			key.ID, AdminUser, s.box.Seal([]byte(key.Secret), []byte(key.ID)), now())
		return err
	})
	if err != nil {
		return AccessKey{}, fmt.Errorf("ensure admin access key: %w", err)
	}
	return key, nil
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newID returns an AWS-style identifier: a 4-letter prefix and 16 characters.
func newID(prefix string) string {
	b := make([]byte, 10)
	rand.Read(b)
	return prefix + idEncoding.EncodeToString(b)
}

func newSecret() string {
	b := make([]byte, 30)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b) // 40 characters, like AWS
}

func newAccountID() string {
	n, _ := rand.Int(rand.Reader, big.NewInt(9e11))
	return fmt.Sprintf("%012d", n.Int64()+1e11)
}

// NewTemporaryKeyID returns an access key ID for STS credentials (ASIA…).
func NewTemporaryKeyID() string { return newID("ASIA") }

// NewSecret returns a new secret access key.
func NewSecret() string { return newSecret() }
