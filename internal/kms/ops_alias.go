package kms

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"
)

// The alias operations. An alias names one key; it is a resource of its
// own (arn:…:alias/NAME), so changing one needs permission on the alias
// (IAM) and on the key or keys involved (key policy and IAM).

// checkAliasName validates an alias a caller creates, moves or deletes.
func checkAliasName(name string) error {
	if name == "" {
		return missing("aliasName")
	}
	if err := checkLength("aliasName", len(name), 1, 256); err != nil {
		return err
	}
	switch {
	case !strings.HasPrefix(name, "alias/") || name == "alias/":
		return kmsError("InvalidAliasNameException", "Alias must start with the prefix \"alias/\" and have a name after it.")
	case !aliasNameRE.MatchString(name):
		return validation("1 validation error detected: Value '%s' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$", name)
	case strings.HasPrefix(name, "alias/aws/"):
		return kmsError("InvalidAliasNameException", "Alias names beginning with alias/aws/ are reserved for AWS managed keys.")
	}
	return nil
}

// aliasTarget resolves the TargetKeyId of CreateAlias/UpdateAlias: a key ID
// or key ARN (an alias may not point to another alias).
func (s *Service) aliasTarget(ctx context.Context, ref string) (*key, error) {
	if err := checkKeyRef("targetKeyId", ref); err != nil {
		return nil, err
	}
	if strings.HasPrefix(ref, "alias/") || strings.Contains(ref, ":alias/") {
		return nil, validation("TargetKeyId must be a key ID or key ARN, not an alias")
	}
	k, _, err := s.resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	if k.State == statePendingDeletion {
		return nil, invalidState(k)
	}
	return k, customerManaged(k, "an alias")
}

// aliasKey returns the ID of the key an alias names.
func (s *Service) aliasKey(ctx context.Context, name string) (string, error) {
	var id string
	err := s.db.QueryRowContext(ctx, `SELECT key_id FROM kms_aliases WHERE name = ?`, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", kmsError("NotFoundException", "Alias %s is not found.", s.aliasARN(name))
	}
	return id, err
}

func (s *Service) createAlias(c *call) (any, error) {
	var in struct{ AliasName, TargetKeyId string }
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	k, err := s.aliasTarget(c.ctx, in.TargetKeyId)
	if err != nil {
		return nil, err
	}
	if err := firstError(s.authorizeAccount(c.ctx, c.p, "kms:CreateAlias", s.aliasARN(in.AliasName), nil),
		s.authorizeKey(c.ctx, c.p, "kms:CreateAlias", k, nil)); err != nil {
		return nil, err
	}
	now := s.now().UnixMilli()
	_, err = s.db.ExecContext(c.ctx, `INSERT INTO kms_aliases (name, key_id, created, updated) VALUES (?, ?, ?, ?)`,
		in.AliasName, k.ID, now, now)
	if err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed") {
		return nil, kmsError("AlreadyExistsException", "An alias with the name %s already exists", s.aliasARN(in.AliasName))
	}
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

func (s *Service) updateAlias(c *call) (any, error) {
	var in struct{ AliasName, TargetKeyId string }
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	oldID, err := s.aliasKey(c.ctx, in.AliasName)
	if err != nil {
		return nil, err
	}
	old, err := s.key(c.ctx, oldID)
	if err != nil {
		return nil, err
	}
	k, err := s.aliasTarget(c.ctx, in.TargetKeyId)
	if err != nil {
		return nil, err
	}
	if err := firstError(s.authorizeAccount(c.ctx, c.p, "kms:UpdateAlias", s.aliasARN(in.AliasName), nil),
		s.authorizeKey(c.ctx, c.p, "kms:UpdateAlias", old, nil),
		s.authorizeKey(c.ctx, c.p, "kms:UpdateAlias", k, nil)); err != nil {
		return nil, err
	}
	res, err := s.db.ExecContext(c.ctx, `UPDATE kms_aliases SET key_id = ?, updated = ? WHERE name = ? AND key_id = ?`,
		k.ID, s.now().UnixMilli(), in.AliasName, oldID)
	if err != nil {
		return nil, err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return nil, kmsError("ConflictException", "alias %s changed during the request; retry", in.AliasName)
	}
	return empty{}, nil
}

func (s *Service) deleteAlias(c *call) (any, error) {
	var in struct{ AliasName string }
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if err := checkAliasName(in.AliasName); err != nil {
		return nil, err
	}
	id, err := s.aliasKey(c.ctx, in.AliasName)
	if err != nil {
		return nil, err
	}
	k, err := s.key(c.ctx, id)
	if err != nil {
		return nil, err
	}
	if err := firstError(s.authorizeAccount(c.ctx, c.p, "kms:DeleteAlias", s.aliasARN(in.AliasName), nil),
		s.authorizeKey(c.ctx, c.p, "kms:DeleteAlias", k, nil)); err != nil {
		return nil, err
	}
	if _, err := s.db.ExecContext(c.ctx, `DELETE FROM kms_aliases WHERE name = ?`, in.AliasName); err != nil {
		return nil, err
	}
	return empty{}, nil
}

type aliasEntry struct {
	AliasName       string
	AliasArn        string
	TargetKeyId     string
	CreationDate    *epochTime
	LastUpdatedDate *epochTime
}

func (s *Service) listAliases(c *call) (any, error) {
	var in struct {
		KeyId  string
		Limit  *int
		Marker string
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	limit, err := checkLimit(in.Limit, 100)
	if err != nil {
		return nil, err
	}
	if in.Marker != "" && !strings.HasPrefix(in.Marker, "alias/") {
		return nil, kmsError("InvalidMarkerException", "the marker is not one that ListAliases returned")
	}
	if err := s.authorizeAccount(c.ctx, c.p, "kms:ListAliases", "*", nil); err != nil {
		return nil, err
	}
	if err := s.purgeExpired(c.ctx); err != nil {
		return nil, err
	}
	q, args := `SELECT name, key_id, created, updated FROM kms_aliases WHERE name > ?`, []any{in.Marker}
	if in.KeyId != "" {
		if err := checkKeyRef("keyId", in.KeyId); err != nil {
			return nil, err
		}
		k, _, err := s.resolve(c.ctx, in.KeyId)
		if err != nil {
			return nil, err
		}
		q, args = q+` AND key_id = ?`, append(args, k.ID)
	}
	rows, err := s.db.QueryContext(c.ctx, q+` ORDER BY name LIMIT ?`, append(args, limit+1)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := struct {
		Aliases    []aliasEntry
		NextMarker string `json:",omitempty"`
		Truncated  bool
	}{Aliases: []aliasEntry{}}
	for rows.Next() {
		var e aliasEntry
		var created, updated int64
		if err := rows.Scan(&e.AliasName, &e.TargetKeyId, &created, &updated); err != nil {
			return nil, err
		}
		e.AliasArn = s.aliasARN(e.AliasName)
		e.CreationDate, e.LastUpdatedDate = epoch(time.UnixMilli(created)), epoch(time.UnixMilli(updated))
		out.Aliases = append(out.Aliases, e)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out.Aliases) > limit {
		out.Aliases, out.Truncated = out.Aliases[:limit], true
		out.NextMarker = out.Aliases[limit-1].AliasName
	}
	return out, nil
}
