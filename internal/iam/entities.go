package iam

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/policy"
)

// User is an IAM user.
type User struct {
	Name, ID, Path, ARN string
	Created             time.Time
}

// Role is an IAM role.
type Role struct {
	Name, ID, Path, ARN string
	Trust               string
	Description         string
	MaxSession          int
	Created             time.Time
}

// ManagedPolicy is a customer-managed or built-in (AWS-managed) policy.
type ManagedPolicy struct {
	ARN, Name, ID, Path string
	Document            string
	Description         string
	Created, Updated    time.Time
	Attachments         int
	BuiltIn             bool
}

// AccessKeyMeta describes an access key without its secret.
type AccessKeyMeta struct {
	ID, User, Status string
	Created          time.Time
}

// Principal kinds owning policies.
const (
	KindUser = "user"
	KindRole = "role"
)

const maxAccessKeysPerUser = 2

func noSuchEntity(format string, args ...any) error {
	return awsproto.Errorf(http.StatusNotFound, "NoSuchEntity", format, args...)
}

func alreadyExists(format string, args ...any) error {
	return awsproto.Errorf(http.StatusConflict, "EntityAlreadyExists", format, args...)
}

func deleteConflict(format string, args ...any) error {
	return awsproto.Errorf(http.StatusConflict, "DeleteConflict", format, args...)
}

func validation(format string, args ...any) error {
	return awsproto.Errorf(http.StatusBadRequest, "ValidationError", format, args...)
}

var (
	nameRE       = regexp.MustCompile(`^[\w+=,.@-]+$`)
	pathRE       = regexp.MustCompile(`^/([\x21-\x7E]*/)?$`)
	accessKeyRE  = regexp.MustCompile(`^[\w]{16,128}$`)
	errNoEntity  = errors.New("no such entity")
	timeLayout   = time.RFC3339Nano
	builtinPath  = "arn:aws:iam::aws:policy/"
	maxPolicyLen = 131072
)

func checkName(field, v string, max int) error {
	if v == "" {
		return validation("%s is required", field)
	}
	if len(v) > max || !nameRE.MatchString(v) {
		return validation("1 validation error detected: Value '%s' at '%s' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+ and have length at most %d", v, field, max)
	}
	return nil
}

func checkPath(p string) (string, error) {
	if p == "" {
		return "/", nil
	}
	if len(p) > 512 || !pathRE.MatchString(p) {
		return "", validation("path %q must begin and end with / and contain printable ASCII", p)
	}
	return p, nil
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(timeLayout, s)
	return t
}

// isUnique reports whether err is a SQLite UNIQUE/PRIMARY KEY violation.
func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

func (s *Store) changed() { s.gen.Add(1) }

// ---- users ----

// CreateUser creates a user.
func (s *Store) CreateUser(ctx context.Context, name, path string) (User, error) {
	if err := checkName("userName", name, 64); err != nil {
		return User{}, err
	}
	path, err := checkPath(path)
	if err != nil {
		return User{}, err
	}
	u := User{Name: name, ID: newID("AIDA"), Path: path, Created: time.Now().UTC()}
	_, err = s.db.ExecContext(ctx, `INSERT INTO iam_users (name, user_id, path, created) VALUES (?, ?, ?, ?)`,
		u.Name, u.ID, u.Path, u.Created.Format(timeLayout))
	if isUnique(err) {
		return User{}, alreadyExists("User with name %s already exists.", name)
	}
	if err != nil {
		return User{}, err
	}
	s.changed()
	u.ARN = s.arn("user", u.Path, u.Name)
	return u, nil
}

func (s *Store) arn(kind, path, name string) string {
	return fmt.Sprintf("arn:aws:iam::%s:%s%s%s", s.accountID, kind, path, name)
}

// GetUser returns a user.
func (s *Store) GetUser(ctx context.Context, name string) (User, error) {
	var u User
	var created string
	err := s.db.QueryRowContext(ctx, `SELECT name, user_id, path, created FROM iam_users WHERE name = ?`, name).
		Scan(&u.Name, &u.ID, &u.Path, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, noSuchEntity("The user with name %s cannot be found.", name)
	}
	if err != nil {
		return User{}, err
	}
	u.Created, u.ARN = parseTime(created), s.arn("user", u.Path, u.Name)
	return u, nil
}

// ListUsers lists users whose path starts with prefix.
func (s *Store) ListUsers(ctx context.Context, prefix string) ([]User, error) {
	if prefix == "" {
		prefix = "/"
	}
	rows, err := s.db.QueryContext(ctx, `SELECT name, user_id, path, created FROM iam_users WHERE substr(path, 1, length(?)) = ? ORDER BY name`, prefix, prefix)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		var u User
		var created string
		if err := rows.Scan(&u.Name, &u.ID, &u.Path, &created); err != nil {
			return nil, err
		}
		u.Created, u.ARN = parseTime(created), s.arn("user", u.Path, u.Name)
		out = append(out, u)
	}
	return out, rows.Err()
}

// DeleteUser deletes a user that has no access keys or policies left, as IAM
// requires.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	if name == AdminUser {
		return deleteConflict("the admin user holds the installation's bootstrap key and cannot be deleted")
	}
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := exists(ctx, tx, `SELECT 1 FROM iam_users WHERE name = ?`, name); err != nil {
			return noSuchEntity("The user with name %s cannot be found.", name)
		}
		for _, q := range []string{
			`SELECT 1 FROM iam_access_keys WHERE user_name = ?`,
			`SELECT 1 FROM iam_inline_policies WHERE kind = 'user' AND owner = ?`,
			`SELECT 1 FROM iam_attachments WHERE kind = 'user' AND owner = ?`,
		} {
			if exists(ctx, tx, q, name) == nil {
				return deleteConflict("Cannot delete entity, must delete access keys and policies first.")
			}
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM iam_users WHERE name = ?`, name)
		return err
	})
	if err == nil {
		s.changed()
	}
	return err
}

func exists(ctx context.Context, tx *sql.Tx, q string, args ...any) error {
	var one int
	err := tx.QueryRowContext(ctx, q, args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return errNoEntity
	}
	return err
}

// ---- access keys ----

// CreateAccessKey creates a new active key for user.
func (s *Store) CreateAccessKey(ctx context.Context, user string) (AccessKey, time.Time, error) {
	key := AccessKey{ID: newID("AKIA"), Secret: newSecret(), User: user}
	created := time.Now().UTC()
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := exists(ctx, tx, `SELECT 1 FROM iam_users WHERE name = ?`, user); err != nil {
			return noSuchEntity("The user with name %s cannot be found.", user)
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM iam_access_keys WHERE user_name = ?`, user).Scan(&n); err != nil {
			return err
		}
		if n >= maxAccessKeysPerUser {
			return awsproto.Errorf(http.StatusConflict, "LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: %d", maxAccessKeysPerUser)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO iam_access_keys (access_key_id, user_name, secret_sealed, created) VALUES (?, ?, ?, ?)`,
			key.ID, user, s.box.Seal([]byte(key.Secret), []byte(key.ID)), created.Format(timeLayout))
		return err
	})
	if err != nil {
		return AccessKey{}, time.Time{}, err
	}
	s.changed()
	return key, created, nil
}

// ListAccessKeys lists a user's keys.
func (s *Store) ListAccessKeys(ctx context.Context, user string) ([]AccessKeyMeta, error) {
	if _, err := s.GetUser(ctx, user); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT access_key_id, user_name, status, created FROM iam_access_keys WHERE user_name = ? ORDER BY created`, user)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AccessKeyMeta
	for rows.Next() {
		var k AccessKeyMeta
		var created string
		if err := rows.Scan(&k.ID, &k.User, &k.Status, &created); err != nil {
			return nil, err
		}
		k.Created = parseTime(created)
		out = append(out, k)
	}
	return out, rows.Err()
}

// UpdateAccessKey sets a key's status (Active or Inactive).
func (s *Store) UpdateAccessKey(ctx context.Context, user, id, status string) error {
	if status != "Active" && status != "Inactive" {
		return validation("Status must be Active or Inactive")
	}
	res, err := s.db.ExecContext(ctx, `UPDATE iam_access_keys SET status = ? WHERE access_key_id = ? AND user_name = ?`, status, id, user)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return noSuchEntity("The Access Key with id %s cannot be found.", id)
	}
	s.changed()
	return nil
}

// DeleteAccessKey deletes a key.
func (s *Store) DeleteAccessKey(ctx context.Context, user, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM iam_access_keys WHERE access_key_id = ? AND user_name = ?`, id, user)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return noSuchEntity("The Access Key with id %s cannot be found.", id)
	}
	s.changed()
	return nil
}

// ---- roles ----

// CreateRole creates a role with a trust policy.
func (s *Store) CreateRole(ctx context.Context, r Role) (Role, error) {
	if err := checkName("roleName", r.Name, 64); err != nil {
		return Role{}, err
	}
	path, err := checkPath(r.Path)
	if err != nil {
		return Role{}, err
	}
	if _, err := policy.ParseTrust(r.Trust); err != nil {
		return Role{}, malformed(err)
	}
	if r.MaxSession == 0 {
		r.MaxSession = 3600
	}
	if r.MaxSession < 3600 || r.MaxSession > 43200 {
		return Role{}, validation("MaxSessionDuration must be between 3600 and 43200 seconds")
	}
	r.Path, r.ID, r.Created = path, newID("AROA"), time.Now().UTC()
	_, err = s.db.ExecContext(ctx, `INSERT INTO iam_roles (name, role_id, path, trust_policy, description, max_session, created) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		r.Name, r.ID, r.Path, r.Trust, r.Description, r.MaxSession, r.Created.Format(timeLayout))
	if isUnique(err) {
		return Role{}, alreadyExists("Role with name %s already exists.", r.Name)
	}
	if err != nil {
		return Role{}, err
	}
	s.changed()
	r.ARN = s.arn("role", r.Path, r.Name)
	return r, nil
}

func malformed(err error) error {
	return awsproto.Errorf(http.StatusBadRequest, "MalformedPolicyDocument", "%s", err.Error())
}

// GetRole returns a role.
func (s *Store) GetRole(ctx context.Context, name string) (Role, error) {
	var r Role
	var created string
	err := s.db.QueryRowContext(ctx, `SELECT name, role_id, path, trust_policy, description, max_session, created FROM iam_roles WHERE name = ?`, name).
		Scan(&r.Name, &r.ID, &r.Path, &r.Trust, &r.Description, &r.MaxSession, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return Role{}, noSuchEntity("The role with name %s cannot be found.", name)
	}
	if err != nil {
		return Role{}, err
	}
	r.Created, r.ARN = parseTime(created), s.arn("role", r.Path, r.Name)
	return r, nil
}

// RoleByARN returns the role an ARN names in this account.
func (s *Store) RoleByARN(ctx context.Context, arn string) (Role, error) {
	prefix := "arn:aws:iam::" + s.accountID + ":role/"
	rest, ok := strings.CutPrefix(arn, prefix)
	if !ok {
		return Role{}, validation("%s is not a role ARN of account %s", arn, s.accountID)
	}
	name := rest[strings.LastIndex(rest, "/")+1:]
	r, err := s.GetRole(ctx, name)
	if err != nil {
		return Role{}, err
	}
	if r.ARN != arn {
		return Role{}, noSuchEntity("The role with ARN %s cannot be found.", arn)
	}
	return r, nil
}

// ListRoles lists roles whose path starts with prefix.
func (s *Store) ListRoles(ctx context.Context, prefix string) ([]Role, error) {
	if prefix == "" {
		prefix = "/"
	}
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM iam_roles WHERE substr(path, 1, length(?)) = ? ORDER BY name`, prefix, prefix)
	if err != nil {
		return nil, err
	}
	var names []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		names = append(names, n)
	}
	rows.Close()
	var out []Role
	for _, n := range names {
		r, err := s.GetRole(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// UpdateTrust replaces a role's trust policy.
func (s *Store) UpdateTrust(ctx context.Context, name, doc string) error {
	if _, err := policy.ParseTrust(doc); err != nil {
		return malformed(err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE iam_roles SET trust_policy = ? WHERE name = ?`, doc, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return noSuchEntity("The role with name %s cannot be found.", name)
	}
	s.changed()
	return nil
}

// DeleteRole deletes a role without policies.
func (s *Store) DeleteRole(ctx context.Context, name string) error {
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := exists(ctx, tx, `SELECT 1 FROM iam_roles WHERE name = ?`, name); err != nil {
			return noSuchEntity("The role with name %s cannot be found.", name)
		}
		for _, q := range []string{
			`SELECT 1 FROM iam_inline_policies WHERE kind = 'role' AND owner = ?`,
			`SELECT 1 FROM iam_attachments WHERE kind = 'role' AND owner = ?`,
		} {
			if exists(ctx, tx, q, name) == nil {
				return deleteConflict("Cannot delete entity, must delete policies first.")
			}
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM iam_roles WHERE name = ?`, name)
		return err
	})
	if err == nil {
		s.changed()
	}
	return err
}

// ---- inline policies ----

func (s *Store) ownerExists(ctx context.Context, kind, owner string) error {
	if kind == KindUser {
		_, err := s.GetUser(ctx, owner)
		return err
	}
	_, err := s.GetRole(ctx, owner)
	return err
}

// PutInlinePolicy adds or replaces an inline policy of a user or role.
func (s *Store) PutInlinePolicy(ctx context.Context, kind, owner, name, doc string) error {
	if err := checkName("policyName", name, 128); err != nil {
		return err
	}
	if len(doc) > maxPolicyLen {
		return awsproto.Errorf(http.StatusConflict, "LimitExceeded", "policy document is larger than %d bytes", maxPolicyLen)
	}
	if _, err := policy.Parse(doc); err != nil {
		return malformed(err)
	}
	if err := s.ownerExists(ctx, kind, owner); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO iam_inline_policies (kind, owner, name, document) VALUES (?, ?, ?, ?)
		ON CONFLICT (kind, owner, name) DO UPDATE SET document = excluded.document`, kind, owner, name, doc)
	if err == nil {
		s.changed()
	}
	return err
}

// GetInlinePolicy returns an inline policy document.
func (s *Store) GetInlinePolicy(ctx context.Context, kind, owner, name string) (string, error) {
	if err := s.ownerExists(ctx, kind, owner); err != nil {
		return "", err
	}
	var doc string
	err := s.db.QueryRowContext(ctx, `SELECT document FROM iam_inline_policies WHERE kind = ? AND owner = ? AND name = ?`, kind, owner, name).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return "", noSuchEntity("The %s policy with name %s cannot be found.", kind, name)
	}
	return doc, err
}

// DeleteInlinePolicy deletes an inline policy.
func (s *Store) DeleteInlinePolicy(ctx context.Context, kind, owner, name string) error {
	if err := s.ownerExists(ctx, kind, owner); err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM iam_inline_policies WHERE kind = ? AND owner = ? AND name = ?`, kind, owner, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return noSuchEntity("The %s policy with name %s cannot be found.", kind, name)
	}
	s.changed()
	return nil
}

// ListInlinePolicies lists the names of an owner's inline policies.
func (s *Store) ListInlinePolicies(ctx context.Context, kind, owner string) ([]string, error) {
	if err := s.ownerExists(ctx, kind, owner); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM iam_inline_policies WHERE kind = ? AND owner = ? ORDER BY name`, kind, owner)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// ---- managed policies ----

// CreatePolicy creates a customer-managed policy.
func (s *Store) CreatePolicy(ctx context.Context, name, path, doc, description string) (ManagedPolicy, error) {
	if err := checkName("policyName", name, 128); err != nil {
		return ManagedPolicy{}, err
	}
	path, err := checkPath(path)
	if err != nil {
		return ManagedPolicy{}, err
	}
	if _, err := policy.Parse(doc); err != nil {
		return ManagedPolicy{}, malformed(err)
	}
	now := time.Now().UTC()
	p := ManagedPolicy{ARN: s.arn("policy", path, name), Name: name, ID: newID("ANPA"), Path: path, Document: doc,
		Description: description, Created: now, Updated: now}
	_, err = s.db.ExecContext(ctx, `INSERT INTO iam_policies (arn, name, policy_id, path, document, description, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		p.ARN, p.Name, p.ID, p.Path, p.Document, p.Description, now.Format(timeLayout), now.Format(timeLayout))
	if isUnique(err) {
		return ManagedPolicy{}, alreadyExists("A policy called %s already exists. Duplicate names are not allowed.", name)
	}
	if err == nil {
		s.changed()
	}
	return p, err
}

// GetPolicy returns a managed policy (customer or built-in).
func (s *Store) GetPolicy(ctx context.Context, arn string) (ManagedPolicy, error) {
	if p, ok := builtinPolicies[arn]; ok {
		p.Attachments = s.attachmentCount(ctx, arn)
		return p, nil
	}
	var p ManagedPolicy
	var created, updated string
	err := s.db.QueryRowContext(ctx, `SELECT arn, name, policy_id, path, document, description, created, updated FROM iam_policies WHERE arn = ?`, arn).
		Scan(&p.ARN, &p.Name, &p.ID, &p.Path, &p.Document, &p.Description, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return ManagedPolicy{}, noSuchEntity("Policy %s does not exist or is not attachable.", arn)
	}
	if err != nil {
		return ManagedPolicy{}, err
	}
	p.Created, p.Updated = parseTime(created), parseTime(updated)
	p.Attachments = s.attachmentCount(ctx, arn)
	return p, nil
}

func (s *Store) attachmentCount(ctx context.Context, arn string) int {
	var n int
	s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM iam_attachments WHERE policy_arn = ?`, arn).Scan(&n)
	return n
}

// ListPolicies lists managed policies; scope is All, AWS or Local.
func (s *Store) ListPolicies(ctx context.Context, scope string, onlyAttached bool) ([]ManagedPolicy, error) {
	var out []ManagedPolicy
	if scope == "" || scope == "All" || scope == "AWS" {
		for _, arn := range builtinOrder {
			p, _ := s.GetPolicy(ctx, arn)
			out = append(out, p)
		}
	}
	if scope == "" || scope == "All" || scope == "Local" {
		rows, err := s.db.QueryContext(ctx, `SELECT arn FROM iam_policies ORDER BY name`)
		if err != nil {
			return nil, err
		}
		var arns []string
		for rows.Next() {
			var a string
			rows.Scan(&a)
			arns = append(arns, a)
		}
		rows.Close()
		for _, a := range arns {
			p, err := s.GetPolicy(ctx, a)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	if onlyAttached {
		kept := out[:0]
		for _, p := range out {
			if p.Attachments > 0 {
				kept = append(kept, p)
			}
		}
		out = kept
	}
	return out, nil
}

// DeletePolicy deletes a customer-managed policy that is not attached.
func (s *Store) DeletePolicy(ctx context.Context, arn string) error {
	if _, ok := builtinPolicies[arn]; ok {
		return awsproto.Errorf(http.StatusBadRequest, "InvalidInput", "AWS managed policies cannot be deleted")
	}
	if _, err := s.GetPolicy(ctx, arn); err != nil {
		return err
	}
	if s.attachmentCount(ctx, arn) > 0 {
		return deleteConflict("Cannot delete a policy attached to entities.")
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM iam_policies WHERE arn = ?`, arn); err != nil {
		return err
	}
	s.changed()
	return nil
}

// Attach attaches a managed policy to a user or role.
func (s *Store) Attach(ctx context.Context, kind, owner, arn string) error {
	if err := s.ownerExists(ctx, kind, owner); err != nil {
		return err
	}
	if _, err := s.GetPolicy(ctx, arn); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO iam_attachments (kind, owner, policy_arn) VALUES (?, ?, ?)`, kind, owner, arn)
	if err == nil {
		s.changed()
	}
	return err
}

// Detach detaches a managed policy.
func (s *Store) Detach(ctx context.Context, kind, owner, arn string) error {
	if err := s.ownerExists(ctx, kind, owner); err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM iam_attachments WHERE kind = ? AND owner = ? AND policy_arn = ?`, kind, owner, arn)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return noSuchEntity("Policy %s was not found attached to %s %s.", arn, kind, owner)
	}
	s.changed()
	return nil
}

// ListAttached lists the managed policies attached to a user or role.
func (s *Store) ListAttached(ctx context.Context, kind, owner string) ([]ManagedPolicy, error) {
	if err := s.ownerExists(ctx, kind, owner); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT policy_arn FROM iam_attachments WHERE kind = ? AND owner = ? ORDER BY policy_arn`, kind, owner)
	if err != nil {
		return nil, err
	}
	var arns []string
	for rows.Next() {
		var a string
		rows.Scan(&a)
		arns = append(arns, a)
	}
	rows.Close()
	var out []ManagedPolicy
	for _, a := range arns {
		p, err := s.GetPolicy(ctx, a)
		if err != nil {
			continue // deleted under us: not attached any more
		}
		out = append(out, p)
	}
	return out, nil
}

// policyDocuments returns every identity policy of a user or role: inline
// and attached.
func (s *Store) policyDocuments(ctx context.Context, kind, owner string) ([]string, error) {
	var docs []string
	rows, err := s.db.QueryContext(ctx, `SELECT document FROM iam_inline_policies WHERE kind = ? AND owner = ?`, kind, owner)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var d string
		rows.Scan(&d)
		docs = append(docs, d)
	}
	rows.Close()
	attached, err := s.db.QueryContext(ctx, `SELECT a.policy_arn, COALESCE(p.document, '') FROM iam_attachments a
		LEFT JOIN iam_policies p ON p.arn = a.policy_arn WHERE a.kind = ? AND a.owner = ?`, kind, owner)
	if err != nil {
		return nil, err
	}
	defer attached.Close()
	for attached.Next() {
		var arn, d string
		attached.Scan(&arn, &d)
		if b, ok := builtinPolicies[arn]; ok {
			d = b.Document
		}
		if d != "" {
			docs = append(docs, d)
		}
	}
	return docs, attached.Err()
}
